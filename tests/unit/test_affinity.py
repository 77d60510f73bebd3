"""handler.pin_cpu (polydet.serving.affinity) and the pairing helpers of `bench compare`."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import pytest

from polydet.bench.common import image_index
from polydet.bench.compare import cpu_list, paired_added_ms
from polydet.errors import ConfigError
from polydet.serving.affinity import claim_cpu
from polydet.serving.config import ServiceConfig

CPUS = sorted(os.sched_getaffinity(0))


def _claimer(lock_dir, cpus, claimed):
    os.sched_setaffinity(0, cpus)
    claimed.put((claim_cpu(lock_dir), sorted(os.sched_getaffinity(0))))
    time.sleep(120)  # holds its CPU until the test stops it (a killed process leaves no shared lock behind)


@pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs at least two CPUs")
def test_workers_take_distinct_cpus_the_extra_one_floats_and_a_dead_one_frees_its_cpu(tmp_path):
    ctx = mp.get_context("spawn")
    two, claimed, procs = CPUS[:2], ctx.Queue(), []
    try:
        for _ in range(3):  # three workers, two CPUs; one at a time, so the order of the claims is known
            procs.append(ctx.Process(target=_claimer, args=(str(tmp_path), two, claimed), daemon=True))
            procs[-1].start()
            procs[-1].got = claimed.get(timeout=60)
        assert [p.got for p in procs] == [(two[0], [two[0]]), (two[1], [two[1]]), (None, two)]
        procs[0].terminate()  # a worker dies: the kernel drops its lock
        procs[0].join(30)
        procs.append(ctx.Process(target=_claimer, args=(str(tmp_path), two, claimed), daemon=True))
        procs[-1].start()
        assert claimed.get(timeout=60) == (two[0], [two[0]])
    finally:
        for p in procs:
            p.terminate()
            p.join(30)


def test_one_allowed_cpu_pins_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    claimed = ctx.Queue()
    p = ctx.Process(target=_claimer, args=(str(tmp_path), CPUS[:1], claimed), daemon=True)
    p.start()
    try:
        assert claimed.get(timeout=60) == (None, CPUS[:1])
        assert not list(tmp_path.iterdir())  # no lock taken
    finally:
        p.terminate()
        p.join(30)


def test_pin_cpu_is_a_bool_of_the_handler_section_and_off_by_default():
    assert ServiceConfig().pin_cpu is False
    assert ServiceConfig.from_section({"pin_cpu": True}).pin_cpu is True
    assert ServiceConfig.from_section(ServiceConfig(pin_cpu=True).to_section()) == ServiceConfig(pin_cpu=True)
    with pytest.raises(ConfigError, match="pin_cpu"):
        ServiceConfig.from_section({"pin_cpu": "yes"})


def test_archive_cli_writes_pin_cpu(tmp_path):
    from polydet.serving.archive import make_parser

    assert make_parser().parse_args([]).pin_cpu is False
    assert make_parser().parse_args(["--pin-cpu", "true"]).pin_cpu is True


def test_cpu_lists_read_like_taskset():
    assert cpu_list(None) is None and cpu_list("") is None
    assert cpu_list("0,1") == [0, 1]
    assert cpu_list("2-3") == [2, 3]
    assert cpu_list("0-1,4,6-7") == [0, 1, 4, 6, 7]


def test_image_index_follows_the_callers_order():
    # thread i starts at image i and steps by the images it sends per request
    assert [image_index(0, s, 16) for s in range(18)] == list(range(16)) + [0, 1]
    assert [image_index(3, s, 16, per_request=8) for s in range(3)] == [3, 11, 3]


def test_paired_added_latency_is_the_median_of_per_image_differences():
    # two images of very different sizes: pooled p50s jump between them, the pairs do not
    base = {"by_image": {0: [0.010, 0.011, 0.012], 1: [0.050, 0.052]}}
    served = {"by_image": {0: [0.0125, 0.0135], 1: [0.053, 0.054, 0.055], 2: [1.0]}}  # image 2: unpaired
    # image 0: 13.0 - 11.0 = 2.0 ms; image 1: 54.0 - 51.0 = 3.0 ms; median of (2, 3) = 2.5 ms
    assert paired_added_ms(served, base) == pytest.approx(2.5)
    assert paired_added_ms({}, base) != paired_added_ms({}, base)  # nothing paired: NaN


def _service_child(artifact, section, device, out):
    from polydet.serving.service import DetectionService

    service = DetectionService.from_artifact(artifact, section, device)
    out.put((sorted(os.sched_getaffinity(0)), service.describe()))


@pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs at least two CPUs")
@pytest.mark.parametrize("pin", [True, False])
def test_a_service_built_with_pin_cpu_pins_its_process(artifacts, tmp_path, pin):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    section = {"pin_cpu": pin, "warmup": False}
    os.environ["TMPDIR"] = str(tmp_path)  # the lock folder the child inherits (a worker's is its server's)
    try:
        p = ctx.Process(target=_service_child, args=(str(artifacts["torchscript"]), section, "cpu", out))
        p.start()
    finally:
        del os.environ["TMPDIR"]
    cpus, described = out.get(timeout=120)
    p.join(30)
    assert (cpus, "pinned to CPU" in described) == (([CPUS[0]], True) if pin else (CPUS, False))
    assert [f.name for f in tmp_path.iterdir()] == ([f"polydet-cpu-{CPUS[0]}.lock"] if pin else [])
