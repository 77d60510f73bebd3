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


# -- scripts/gpu_multi_bench.py: its non-GPU logic --------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_multi_bench", REPO / "scripts" / "gpu_multi_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_multi_bench", None)


def page(images: dict, gauges: dict | None = None) -> str:
    """/metrics text as TorchServe 0.12.0's Prometheus client writes it (trailing comma in the labels)."""
    lines = ["# HELP PolydetImages Torchserve prometheus counter metric with unit: count",
             "# TYPE PolydetImages counter"]
    lines += [f'PolydetImages{{Device="{d}",ModelName="polydet",Level="Model",Hostname="h",}} {v}'
              for d, v in images.items()]
    for (name, d), v in (gauges or {}).items():
        lines.append(f'{name}{{Device="{d}",ModelName="polydet",Level="Model",Hostname="h",}} {v}')
    lines.append('ts_inference_requests_total{model_name="polydet",model_version="default",hostname="h",} 9.0')
    return "\n".join(lines) + "\n"


def test_bench_arguments_and_gpu_sets(bench):
    assert bench.parse_counts("1,2,4") == [1, 2, 4]
    for bad in ("", "0,1", "1,1", "two"):
        with pytest.raises(SystemExit):
            bench.parse_counts(bad)
    run, skipped = bench.gpu_sets([1, 2, 4], visible=2)
    assert [p.device_ids for p in run] == [(0,), (0, 1)]
    assert [p.properties() for p in run] == [{"number_of_gpu": "1"}, {"number_of_gpu": "2"}]
    assert skipped == [{"gpus": 4, "skipped": "only 2 GPU(s) visible"}]
    args = bench.make_parser().parse_args(["serve", "--out", "x.json"])
    assert (args.per_gpu, args.batch_size, args.delay, args.gpus) == (GPU_BATCHING.min_workers, GPU_BATCHING.batch_size,
                                                                      GPU_BATCHING.max_batch_delay, "1,2,4")


def test_bench_reads_each_device_from_metrics(bench):
    first = bench.parse_metrics(page({"cuda:0": 100.0, "cuda:1": 50.0}))
    assert ("ts_inference_requests_total", {"model_name": "polydet", "model_version": "default", "hostname": "h"},
            9.0) in first
    pages = [bench.parse_metrics(page({}, {("PolydetInferenceMs", "cuda:0"): 10.0, ("PolydetInferenceMs", "cuda:1"): 30.0,
                                           ("PolydetBatchSize", "cuda:0"): 16.0})),
             bench.parse_metrics(page({}, {("PolydetInferenceMs", "cuda:0"): 20.0, ("PolydetBatchSize", "cuda:0"): 8.0}))]
    last = bench.parse_metrics(page({"cuda:0": 300.0, "cuda:1": 250.0, "cuda:2": 40.0}))
    dev = bench.device_summary(pages, first, last, seconds=10.0)
    assert dev == {"cuda:0": {"img_per_s": 20.0, "model_ms": 15.0, "batch_fill": 12.0},
                   "cuda:1": {"img_per_s": 20.0, "model_ms": 30.0}, "cuda:2": {"img_per_s": 4.0}}
    row = bench.summarize({"gpus": 3}, dev)
    assert row["model_ms"] == 22.5 and row["batch_fill"] == 12.0 and row["img_per_s_by_gpu"] == "20 20 4"
    assert row["gpu_mem_mb"] == "- - -"


def test_the_device_probe_scrapes_a_real_metrics_endpoint_before_during_and_after(bench):
    """Over HTTP on 127.0.0.1: the first page on entering, one per period inside (a failed scrape skipped),
    the last on leaving; the counter's growth over the window is the img/s."""
    from metrics_stub import metrics_endpoint, wait_for_scrapes

    def answer(n):  # the first sample inside the window fails (no answer): skipped, not fatal
        return None if n == 2 else page({"cuda:0": 10.0 * n}, {("PolydetInferenceMs", "cuda:0"): float(n)})

    with metrics_endpoint(answer) as (url, served), bench.DeviceProbe(url, period=0.05) as dev:
        wait_for_scrapes(served, 5)
    assert set(served) == {"/metrics"}
    n = len(served)
    assert n >= 5
    assert len(dev.pages) == n - 3  # all but the first, the failed one and the last
    assert bench.by_device(dev.first, "PolydetImages") == {"cuda:0": 10.0}
    assert bench.by_device(dev.last, "PolydetImages") == {"cuda:0": 10.0 * n}
    got = bench.device_summary(dev.pages, dev.first, dev.last, seconds=2.0)
    assert got == {"cuda:0": {"img_per_s": 10.0 * (n - 1) / 2.0, "model_ms": sum(range(3, n)) / (n - 3)}}


def test_bench_speedup_targets_and_table(bench):
    rows = bench.with_speedup([{"gpus": 1, "img_per_s": 1000.0, "p99_ms": 40.0},
                               {"gpus": 2, "img_per_s": 1850.0, "p99_ms": 60.0},
                               {"gpus": 4, "img_per_s": 3600.0, "p99_ms": 140.0}, {"gpus": 8, "skipped": "only 4"}])
    assert [r.get("speedup") for r in rows] == [1.0, 1.85, 3.6, None]
    assert [r.get("meets_target") for r in rows] == [True, True, False, None]  # 4 GPUs: p99 over 100 ms
    text = bench.rows_table(rows)
    assert text.splitlines()[0].startswith("| skipped | gpus |") and "| only 4 |" in text and "3.6" in text


def test_bench_finds_one_gpus_workers_and_judges_the_fault(bench):
    gpus = "0, 00000000:18:00.0\n1, 00000000:2A:00.0\n2, 00000000:3A:00.0\n"
    apps = "101, 00000000:18:00.0\n102, 00000000:2A:00.0\n103, 00000000:2A:00.0\n104, 00000000:3A:00.0\n"
    assert bench.pids_on_gpu(apps, gpus, 1) == [102, 103]
    assert bench.physical_index(1, {"CUDA_VISIBLE_DEVICES": "2,0"}) == 0 and bench.physical_index(1, {}) == 1
    timeline = [{"t": 0.5, "cuda:0": 400, "cuda:1": 380}, {"t": 1.0, "cuda:0": 410, "cuda:1": 300, "killed": [102, 103]},
                {"t": 1.5, "cuda:0": 420, "cuda:1": 0}, {"t": 2.0, "cuda:0": 430}, {"t": 2.5, "cuda:0": 400, "cuda:1": 90}]
    v = bench.fault_verdict(timeline, "cuda:1", {"failures": 3, "failure_reasons": "HTTP 503"})
    assert (v["killed_pids"], v["killed_at_s"], v["victim_back_at_s"], v["others_answered_in_outage"],
            v["failures"]) == ([102, 103], 1.0, 2.5, True, 3)
    timeline[3]["cuda:0"] = 0  # the other GPU stalls too
    assert bench.fault_verdict(timeline, "cuda:1", {})["others_answered_in_outage"] is False
    assert bench.fault_verdict(timeline[:3], "cuda:1", {})["victim_back_at_s"] is None


def test_bench_plot_and_refusal_without_gpus(bench, tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu_multi.json"
    out.write_text('{"rows": [{"gpus": 1, "img_per_s": 900.0, "p99_ms": 50.0}, '
                   '{"gpus": 2, "img_per_s": 1700.0, "p99_ms": 70.0}, {"gpus": 4, "skipped": "only 2"}], "fault": null}')
    assert bench.main(["plot", "--out", str(out)]) == 0
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert bench.main(["serve", "--out", str(tmp_path / "none.json"), "--work", str(tmp_path / "w")]) == 2
    assert "only 0 GPU(s) visible" in capsys.readouterr().err and not (tmp_path / "w").exists()
