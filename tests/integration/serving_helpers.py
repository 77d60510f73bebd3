"""Helpers shared by the integration and reliability tests (test archives, request building, contract checks)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLED_WEIGHTS = REPO / "weights" / "polydet_main_area.pt"
ARCHIVER = Path(sys.executable).with_name("torch-model-archiver")


def build_test_store(root: Path, archive_env: dict, *archive_args: str) -> Path:
    """archive.sh into ``root``/model_store (build files in ``root``/build) with ``archive_env`` (the test
    archives' batching and thresholds) and ``archive_args``, then polydet_v2.mar: the same TorchScript
    artifact as version 2.0 (for the management and register-under-traffic tests). Skips, saying why, where
    TorchServe's prerequisites are missing."""
    import pytest

    from polydet.serving.server import missing_prerequisite

    reason = missing_prerequisite()
    if reason:
        pytest.skip(reason)
    store, build, tmp = root / "model_store", root / "build", root / "tmp"
    tmp.mkdir()
    # torch-model-archiver stages files in $TMPDIR/<model name>: a private TMPDIR keeps two test runs on one
    # host from packing each other's files.
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp), **archive_env)
    _run("archive.sh", ["bash", str(REPO / "archive.sh"), "--store", str(store), "--build", str(build), *archive_args],
         env)
    _run("torch-model-archiver", [str(ARCHIVER), "--model-name", "polydet_v2", "--version", "2.0", "--serialized-file",
                                  str(store_artifact(store)), "--handler", str(REPO / "handlers" / "polydet_handler.py"),
                                  "--config-file", str(build / "polydet-1.0" / "model-config.yaml"),
                                  "--export-path", str(store)], env)
    return store


def _run(name: str, cmd: list[str], env: dict) -> None:
    import pytest

    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode:
        pytest.fail(f"{name} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def store_artifact(store: Path) -> Path:
    """The TorchScript artifact inside a build_test_store's polydet.mar (for in-process comparisons)."""
    return next((store.parent / "build" / "polydet-1.0").glob("*.torchscript"))


def local_detector(artifact: Path, archive_env: dict, **kw):
    """``artifact`` run in-process with the archive's thresholds (``kw``: Detector.from_artifact's others)."""
    from polydet.pipeline import DetectOptions, Detector

    opts = DetectOptions(conf=float(archive_env["CONF"]), max_det=int(archive_env["MAX_DET"]))
    return Detector.from_artifact(artifact, options=opts, **kw)


def load_file(name: str, path: Path):
    """The Python file at ``path`` imported as module ``name`` (scripts that are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def encode(img: np.ndarray, ext: str = ".jpg") -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def page_image(w: int = 480, h: int = 360, seed: int = 0) -> np.ndarray:
    """A light text page on a textured background (BGR), for requests whose answer is not checked."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(40, 140, (h, w, 3), dtype=np.uint8)
    quad = np.array([[0.3 * w, 0.15 * h], [0.75 * w, 0.2 * h], [0.7 * w, 0.85 * h], [0.25 * w, 0.8 * h]], np.int32)
    cv2.fillConvexPoly(img, quad, (235, 235, 230))
    return img


def png_bytes(arr) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def assert_same_result(got: dict, want: dict, px: float = 0.02, score: float = 1e-4) -> None:
    """Same image size, same detections in the same order, polygons and scores within tolerance."""
    assert (got["width"], got["height"]) == (want["width"], want["height"])
    assert [d["class_id"] for d in got["detections"]] == [d["class_id"] for d in want["detections"]]
    for g, w in zip(got["detections"], want["detections"]):
        assert g["class_name"] == w["class_name"]
        assert abs(g["score"] - w["score"]) <= score
        assert np.abs(np.array(g["polygon"]) - np.array(w["polygon"])).max() <= px


def assert_contract(res: dict, width: int, height: int, names=("page", "photo"), extra=()) -> None:
    """The output contract of ../shared/TASK.md, exactly."""
    assert set(res) == {"width", "height", "detections", *extra}
    assert (res["width"], res["height"]) == (width, height)
    scores = [d["score"] for d in res["detections"]]
    assert scores == sorted(scores, reverse=True)
    for d in res["detections"]:
        assert set(d) == {"class_id", "class_name", "score", "polygon"}
        assert isinstance(d["class_id"], int) and d["class_name"] == names[d["class_id"]]
        assert 0.0 <= d["score"] <= 1.0
        poly = np.array(d["polygon"], dtype=float)
        assert poly.shape == (4, 2)
        assert (poly[:, 0] >= 0).all() and (poly[:, 0] <= width).all()
        assert (poly[:, 1] >= 0).all() and (poly[:, 1] <= height).all()


def post_together(url: str, token: str, bodies: list[bytes], timeout: float = 120) -> list:
    """POST each body as raw bytes from its own thread, all released at once (so TorchServe can batch
    them); the responses in the bodies' order."""
    octet = {"Content-Type": "application/octet-stream"}
    return send_together(url, token, [{"data": b, "headers": octet} for b in bodies], timeout)


def send_together(url: str, token: str, requests_kw: list[dict], timeout: float = 120) -> list:
    """POST each request (requests.post's keyword arguments; its headers go with the token's) from its own
    thread, all released at once; the responses in the requests' order."""
    import threading

    import requests

    got: list = [None] * len(requests_kw)
    barrier = threading.Barrier(len(requests_kw))

    def send(i):
        kw = dict(requests_kw[i])
        headers = {**auth(token), **kw.pop("headers", {})}
        barrier.wait()
        got[i] = requests.post(url, headers=headers, timeout=timeout, **kw)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests_kw))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got
