"""Issue 18 without a GPU: which GPUs the workers go on (polydet.serving.gpus) with fake device counts, what
`polydet archive --gpu --gpus` writes for TorchServe, what `polydet serve --gpus` refuses before building,
and the benchmark script's non-GPU logic (scripts/gpu_multi_bench.py)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from polydet.errors import ConfigError
from polydet.serving.archive import GPU_BATCHING, SERVED, Batching, gpu_batching, main as archive_main, model_config
from polydet.serving.gpus import GpuPlacement, parse_gpus, visible_gpus

REPO = Path(__file__).resolve().parents[2]


def no_cuda():
    raise AssertionError("CUDA_VISIBLE_DEVICES is set: the CUDA count must not be asked")


@pytest.mark.parametrize("value, want", [("0,1,2", 3), ("3", 1), ("", 0), ("-1", 0), ("2,-1,3", 1), (" 0, 1 ", 2)])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(value, want):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}, no_cuda) == want


def test_visible_gpus_without_the_variable_asks_cuda_and_refuses_uuids():
    assert visible_gpus({}, lambda: 4) == 4
    with pytest.raises(ConfigError, match="UUID"):
        visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8f5e2c1a-0000"}, no_cuda)


def test_parse_gpus_all_count_and_lists():
    assert parse_gpus("all", 4) == GpuPlacement((0, 1, 2, 3), 4)
    assert parse_gpus("2", 4) == GpuPlacement((0, 1), 4)
    assert parse_gpus("1,3", 4) == GpuPlacement((1, 3), 4)
    assert parse_gpus("1,", 4) == GpuPlacement((1,), 4)
    assert parse_gpus(" ALL ", 1) == GpuPlacement((0,), 1)


@pytest.mark.parametrize("spec, visible, match", [
    ("all", 0, "no GPU is visible"), ("2", 0, "no GPU is visible"), ("5", 4, "only 4 GPU"), ("0", 4, "count N >= 1"),
    ("two", 4, "expected all"), ("1,1", 4, "repeated"), ("4,", 4, "GPU 4 is not visible"), ("0,x", 4, "indices"),
    (",", 4, "indices")])
def test_parse_gpus_refuses(spec, visible, match):
    with pytest.raises(ConfigError, match=match):
        parse_gpus(spec, visible)


def test_first_gpus_need_only_number_of_gpu_others_need_device_ids():
    first = parse_gpus("2", 4)
    assert (first.number_of_gpu(), first.model_device_ids(), first.properties()) == (2, (), {"number_of_gpu": "2"})
    picked = parse_gpus("1,3", 4)
    # deviceIds must each be < number_of_gpu, else TorchServe ignores the list: all 4 stay countable
    assert (picked.number_of_gpu(), picked.model_device_ids(), picked.properties()) == (4, (1, 3), {"number_of_gpu": "4"})
    assert picked.devices() == ["cuda:1", "cuda:3"]


@pytest.mark.parametrize("spec, visible, want", [
    ("all", 4, {0: 10, 1: 10, 2: 10, 3: 10}), ("2", 4, {0: 10, 1: 10}), ("1,3", 4, {1: 10, 3: 10}),
    ("2,", 3, {2: 10}), ("all", 1, {0: 10})])
def test_round_robin_gives_every_gpu_the_one_gpu_worker_count(spec, visible, want):
    p = parse_gpus(spec, visible)
    b = gpu_batching(p)
    assert b.min_workers == b.max_workers == GPU_BATCHING.min_workers * len(want)
    assert dict(Counter(p.assign(b.min_workers))) == want


def test_the_archive_config_carries_the_workers_and_device_ids():
    for spec, ids in (("2", None), ("0,2", [0, 2])):
        keys = yaml.safe_load(model_config(gpu_batching(parse_gpus(spec, 4)), SERVED))
        assert (keys["minWorkers"], keys["maxWorkers"], keys["batchSize"]) == (20, 20, GPU_BATCHING.batch_size)
        assert keys.get("deviceIds") == ids
    assert "deviceIds" not in Batching().to_yaml_keys()  # the CPU archive is unchanged


def test_number_of_gpu_reaches_the_effective_properties(tmp_path):
    from polydet.serving.server import TorchServe

    ts = TorchServe(tmp_path, properties=parse_gpus("1,2", 3).properties())
    assert ts.properties["number_of_gpu"] == "3"
    assert "number_of_gpu" not in TorchServe(tmp_path / "cpu").properties  # without --gpus: TorchServe's default


def test_archive_refuses_gpus_without_gpu(tmp_path, capsys):
    assert archive_main(["--gpus", "2", "--store", str(tmp_path / "s"), "--build", str(tmp_path / "b")]) == 2
    assert "add --gpu" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("visible, spec, match", [("", "all", "no GPU is visible"), ("0,1", "3", "only 2 GPU"),
                                                  ("0,1", "0,2", "GPU 2 is not visible")])
def test_serve_refuses_a_bad_gpus_before_building(tmp_path, monkeypatch, capsys, visible, spec, match):
    from polydet.serving.commands import serve_main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert serve_main(["--root", str(tmp_path), "--gpus", spec]) == 1
    assert match in capsys.readouterr().err
    assert not (tmp_path / "model_store").exists() and not (tmp_path / "logs").exists()
