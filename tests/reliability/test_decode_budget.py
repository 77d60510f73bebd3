"""Small-file bombs against a real TorchServe with the default 50 MP cap (issue 17.4): eight at once keep the
worker's memory within the documented decode budget, and a large JPEG is decoded reduced but answered in its
original pixels.

The module's archive is the test archive (one worker, batchSize 4) with ``handler.max_pixels`` back at the
shipped default, so that 7000x7000 (49 MP) passes the pixel cap and only the decode budget stands in the way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import yaml
from bad_inputs import OCTET, jpeg, jpeg_declaring, page, pil_bytes, png_bomb
from reliability_helpers import start_server, worker
from serving_helpers import REPO, assert_contract, assert_same_result, auth

from polydet.imageio import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, decode_cost

ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
BATCH = 4  # the test archive's batchSize (conftest.ARCHIVE_ENV)
MIB = 2**20
# What the bombs may add to the worker's RSS now that none is decoded in full: the 7000x7000 PNG is
# refused from its header and the JPEG's scan is checked (and would be decoded at 1/8) before any pixel.
# Before the fix the same eight requests took the worker from 409 to 1,342 MiB (RELIABILITY.md).
BOMB_GROWTH_LIMIT = 64 * MIB


@pytest.fixture(scope="module")
def big_store(store, tmp_path_factory):
    """polydet.mar again, with handler.max_pixels at the shipped default (50 MP)."""
    build = store.parent / "build" / "polydet-1.0"
    cfg = yaml.safe_load((build / "model-config.yaml").read_text())
    cfg["handler"]["max_pixels"] = DEFAULT_MAX_PIXELS
    root = tmp_path_factory.mktemp("big_store")
    (root / "model_store").mkdir()
    (root / "model-config.yaml").write_text(yaml.safe_dump(cfg))
    artifact = next(build.glob("*.torchscript"))
    r = subprocess.run([ARCHIVER, "--model-name", "polydet", "--version", "1.0", "--serialized-file", str(artifact),
                        "--handler", str(REPO / "handlers" / "polydet_handler.py"), "--config-file",
                        str(root / "model-config.yaml"), "--export-path", str(root / "model_store")],
                       env=dict(os.environ, TMPDIR=str(root)), capture_output=True, text=True)
    if r.returncode:
        pytest.fail(f"torch-model-archiver failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return root / "model_store"


@pytest.fixture(scope="module")
def big_server(tmp_path_factory, big_store):
    ts = start_server(tmp_path_factory, big_store)
    yield ts
    ts.stop()


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def send_at_once(ts, bodies: list[bytes]) -> tuple[list[requests.Response], int, int, float]:
    """POST every body at the same moment while sampling the worker's RSS every 10 ms:
    (answers, RSS before, peak RSS, seconds until the last answer)."""
    pid = worker(ts)["pid"]
    before = _rss(pid)
    peak, done = before, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.01)

    answers: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i):
        barrier.wait()
        answers[i] = requests.post(f"{ts.inference_url}/predictions/polydet", data=bodies[i], timeout=120,
                                   headers={**auth(ts.tokens.inference), **OCTET})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    done.set()
    sampler.join()
    assert worker(ts)["pid"] == pid, "the worker died"
    return answers, before, max(peak, _rss(pid)), elapsed


def test_eight_small_file_bombs_at_once_keep_the_worker_small(big_server):
    """The issue's bombs: a 47 KB PNG of 7000x7000 and a 77 KB JPEG whose header declares 7000x7000 over a
    480x360 scan, four of each in flight. Before: all eight decoded in full and answered 200 (the JPEG from
    49 MP of grey padding), the worker grew by 933 MiB, the last answer came after 2.9 s."""
    png, hdr = png_bomb(), jpeg_declaring(jpeg(page()), 7000, 7000)
    assert len(png) < 50_000 and len(hdr) < 80_000
    answers, before, peak, elapsed = send_at_once(big_server, [png, hdr] * 4)
    got = [(r.status_code, r.json().get("error", "")) for r in answers]
    print(f"\n8 bombs: worker RSS {before / MIB:.0f} -> peak {peak / MIB:.0f} MiB "
          f"(+{(peak - before) / MIB:.0f}), last answer after {elapsed:.2f} s; {got[:2]}", file=sys.stderr)
    for (status, error), body in zip(got, [png, hdr] * 4):
        if body is png:
            assert status == 413 and "decoding it needs" in error and "above the decode budget" in error, error
        else:
            assert status == 400 and "corrupt JPEG image" in error and "scan data ends" in error, error
    assert peak - before <= BOMB_GROWTH_LIMIT, f"worker grew by {(peak - before) / MIB:.0f} MiB"


def _largest_in_budget_png() -> bytes:
    """A grayscale PNG of zeros whose estimated decode cost is just under the default budget."""
    side = 1000
    while decode_cost("PNG", "L", (side + 250, side + 250)) <= DEFAULT_MAX_DECODE_BYTES:
        side += 250
    return png_bomb(side, side)


def test_eight_bombs_just_under_the_budget_stay_within_batch_times_budget(big_server):
    """The documented bound: a worker holds at most batchSize images, each within max_decode_bytes, so eight
    of the largest images the budget admits raise its RSS by at most batchSize x max_decode_bytes."""
    body = _largest_in_budget_png()
    answers, before, peak, elapsed = send_at_once(big_server, [body] * 8)
    print(f"\n8 in-budget PNGs ({len(body)} bytes): worker RSS {before / MIB:.0f} -> peak {peak / MIB:.0f} MiB "
          f"(+{(peak - before) / MIB:.0f}), {elapsed:.2f} s", file=sys.stderr)
    assert [r.status_code for r in answers] == [200] * 8, answers[0].text[:300]
    assert peak - before <= BATCH * DEFAULT_MAX_DECODE_BYTES


def test_a_large_jpeg_is_answered_in_its_original_pixels(big_server, artifact):
    """A 6000x4500 JPEG (27 MP, above the reduction threshold) is decoded at 1/8 scale: the reply has the
    original width and height, and the in-process answer (same code) agrees; the worker survives."""
    from PIL import Image

    from polydet.pipeline import DetectOptions, Detector

    img = Image.fromarray(page(600, 450, seed=5)).resize((6000, 4500), Image.BILINEAR)
    data = pil_bytes(img, "JPEG", quality=80)
    r = requests.post(f"{big_server.inference_url}/predictions/polydet", data=data, timeout=120,
                      headers={**auth(big_server.tokens.inference), **OCTET})
    assert r.status_code == 200, r.text[:300]
    assert_contract(r.json(), 6000, 4500)
    local = Detector.from_artifact(artifact, options=DetectOptions(conf=0.001, max_det=20))
    assert_same_result(r.json(), local.detect([data])[0].to_dict())
    assert np.isfinite([d["score"] for d in r.json()["detections"]]).all()
