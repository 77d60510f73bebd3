"""Helpers shared by the integration tests (request building, contract checks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLED_WEIGHTS = REPO / "weights" / "polydet_main_area.pt"


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
    import threading

    import requests

    got: list = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(i):
        barrier.wait()
        got[i] = requests.post(url, data=bodies[i], timeout=timeout,
                               headers={"Content-Type": "application/octet-stream", **auth(token)})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got
