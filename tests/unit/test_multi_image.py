"""Multi-image requests without a server: the forms, the limits, order, errors in place, one Detector batch.

The oracle for every image's answer is the same image sent alone (a single-image request), whose answer
is the pipeline's own ``Detections.to_dict()``.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from polydet.errors import ConfigError, InvalidInputError
from polydet.options import DetectOptions
from polydet.pipeline import Detector
from polydet.results import ImageError
from polydet.serving.config import ServiceConfig
from polydet.serving.parse import RequestTooLargeError, natural_key, parse_request
from polydet.serving.service import DetectionService


def jpeg(w=320, h=240, seed=0) -> bytes:
    import cv2

    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8), (w, h))
    cv2.fillConvexPoly(img, np.array([[w * .2, h * .2], [w * .8, h * .25], [w * .75, h * .8], [w * .25, h * .75]],
                                     np.int32), (235, 235, 230))
    return cv2.imencode(".jpg", img)[1].tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def service(artifacts):
    """The random-weight TorchScript with a low conf (every image has detections), forward calls recorded."""
    det = Detector.from_artifact(artifacts["torchscript"], options=DetectOptions(conf=0.001, max_det=7))
    seen = []
    forward = det.backend.forward

    def spy(x):
        seen.append(int(x.shape[0]))
        return forward(x)

    det.backend.forward = spy
    svc = DetectionService(det, ServiceConfig(options=DetectOptions(conf=0.001, max_det=7)))
    svc.seen = seen
    return svc


IMGS = [jpeg(320, 240, 0), jpeg(200, 300, 1), jpeg(640, 480, 2), jpeg(97, 131, 3)]


def alone(service, image: bytes, **options) -> dict:
    """The oracle: the image as a single-image request."""
    (reply,), _ = service.answer([{"body": {"image": b64(image), **options}} if options else {"body": image}])
    assert reply.status == 200, reply.body
    return reply.body


def test_parse_forms():
    a, b = IMGS[0], IMGS[1]
    r = parse_request({"body": {"images": [b64(a), b64(b)], "conf": 0.3, "dewarp": True}})
    assert (r.images, r.options, r.dewarp, r.multi) == ((a, b), {"conf": 0.3}, True, True)
    r = parse_request({"data": json.dumps({"images": [b64(a)]}).encode()})  # gRPC: JSON bytes, a list of one
    assert (r.images, r.multi) == ((a,), True)
    # several inputs (multipart fields, gRPC keys): natural order of the names, whatever order they came in
    r = parse_request({"image10": b"10", "image2": bytearray(b"2"), "image1": b"1", "b": b"b", "a": b"a"})
    assert (r.images, r.options, r.multi) == ((b"a", b"b", b"1", b"2", b"10"), {}, True)
    assert sorted(["x10", "x9", "x1", "y", "x"], key=natural_key) == ["x", "x1", "x9", "x10", "y"]
    # single-image forms stay single (answered with one contract object, as before)
    for req in ({"body": bytearray(a)}, {"file": a}, {"data": a}, {"body": {"image": b64(a)}},
                {"body": bytearray(a), "conf": b"0.3"}):  # a query-string parameter beside a raw body
        r = parse_request(req)
        assert (r.images, r.multi, r.image) == ((a,), False, a)


def test_parse_errors_whole_request_or_in_place():
    r = parse_request({"body": {"images": [b64(IMGS[0]), "%%%", 7, b64(IMGS[1])]}})
    assert r.images[0] == IMGS[0] and r.images[3] == IMGS[1]
    assert r.images[1].status == 400 and r.images[1].reason.startswith('"images"[1] is not valid base64')
    assert r.images[2] == ImageError(400, '"images"[2] must be a base64 string, got int')
    r = parse_request({"a": b"x", "b": {"image": "abc"}})  # a JSON part among several inputs
    assert r.images[0] == b"x" and r.images[1].status == 400 and "options need the JSON form" in r.images[1].reason
    for body, reason in [({"images": []}, '"images" must be a non-empty list'),
                         ({"images": "abc"}, '"images" must be a non-empty list'),
                         ({"image": b64(IMGS[0]), "images": [b64(IMGS[0])]}, 'both "image" and "images"'),
                         ({"conf": 0.3}, 'no "image" key'),
                         ({"images": [b64(IMGS[0])], "dewarp": 1}, '"dewarp" must be true or false')]:
        with pytest.raises(InvalidInputError, match=reason) as e:
            parse_request({"body": body})
        assert e.value.http_status == 400


def test_limits_are_413s_that_name_the_setting():
    config = ServiceConfig(max_images_per_request=3, max_request_bytes=1000)
    ok = parse_request({"body": {"images": ["QUJD"] * 3}}, config)  # 3 images of 3 bytes
    assert ok.images == (b"ABC",) * 3
    cases = [({"body": {"images": ["QUJD"] * 4}}, "4 images in one request; this server takes at most 3 "
                                                   "(handler.max_images_per_request)"),
             # counted before anything is decoded: 10,000 bad strings are one 413, not 10,000 errors
             ({"body": {"images": ["%"] * 10_000}}, "10000 images in one request"),
             ({k: b"x" for k in "abcd"}, "4 images in one request"),
             ({"a": b"x" * 600, "b": b"y" * 401}, "the request's images total 1001 bytes; this server takes at "
                                                  "most 1000 per request (handler.max_request_bytes)"),
             ({"body": {"images": [b64(b"x" * 500)] * 3}}, "images total 1500 bytes"),
             ({"body": bytearray(1001)}, "images total 1001 bytes")]  # one image counts too
    for req, reason in cases:
        with pytest.raises(RequestTooLargeError) as e:
            parse_request(req, config)
        assert e.value.http_status == 413 and reason in str(e.value), str(e.value)
    assert ServiceConfig().max_images_per_request == 16 and ServiceConfig().max_request_bytes == 16 * 2**20
    assert ServiceConfig.from_section({"max_images_per_request": 64, "max_request_bytes": 2**20}) == ServiceConfig(
        max_images_per_request=64, max_request_bytes=2**20)
    for bad in ({"max_images_per_request": 0}, {"max_request_bytes": "1MB"}):
        with pytest.raises(ConfigError):
            ServiceConfig.from_section(bad)


def test_one_detector_batch_answers_every_image_in_order_with_errors_in_place(service):
    want = [alone(service, img) for img in IMGS]
    assert all(w["detections"] for w in want)
    service.seen.clear()
    batch = [{"body": {"images": [b64(IMGS[0]), b64(b"not an image"), b64(IMGS[1]), "%%"]}},  # JSON list
             {"body": bytearray(IMGS[2])},  # a single image, as today
             {"image1": IMGS[3], "image0": IMGS[2]},  # several inputs (multipart / gRPC keys)
             {"body": {"images": [b64(IMGS[0])], "conf": 5}}]  # a bad option: the whole request's 400
    replies, stats = service.answer(batch)
    assert service.seen == [5]  # the 5 decodable images of 3 requests: one forward, one batch
    assert [r.status for r in replies] == [200, 200, 200, 400]
    r0 = replies[0].body["results"]
    assert set(replies[0].body) == {"results"} and len(r0) == 4
    assert r0[0] == want[0] and r0[2] == want[1]
    assert r0[1]["code"] == 400 and set(r0[1]) == {"error", "code"} and "cannot decode image" in r0[1]["error"]
    assert r0[3]["code"] == 400 and r0[3]["error"].startswith('"images"[3] is not valid base64')
    assert replies[1].body == want[2]  # the single-image answer is the bare contract object
    assert replies[2].body == {"results": [want[2], want[3]]}
    assert replies[3].body == {"error": "conf must be a number in [0, 1], got 5", "code": 400}
    # metrics count images: 8 carried (4 + 1 + 2 + 1 refused whole), 6 handed to the Detector, 3 bad
    assert (stats.batch, stats.images, stats.bad) == (8, 6, 3)
    assert stats.detections == pytest.approx(np.mean([len(w["detections"]) for w in (want[0], want[1], want[2],
                                                                                      want[2], want[3])]))


def test_options_apply_to_every_image_of_the_request(service):
    opts = {"conf": 0.02, "max_det": 2}
    want = [alone(service, img, **opts) for img in IMGS[:3]]
    (reply,), _ = service.answer([{"body": {"images": [b64(i) for i in IMGS[:3]], **opts}}])
    assert reply == type(reply)(200, {"results": want})
    assert all(len(r["detections"]) <= 2 for r in reply.body["results"])


def test_all_images_failing_gives_the_first_status_with_the_results(service):
    svc = DetectionService(Detector(service.detector.backend, max_pixels=100))  # 320x240 is over it: 413
    (reply,), stats = svc.answer([{"a": IMGS[0], "b": b"garbage"}])
    assert reply.status == 413
    first, second = reply.body["results"]
    assert first["code"] == 413 and second["code"] == 400
    assert reply.body["code"] == 413 and reply.body["error"] == f"all 2 images failed; the first: {first['error']}"
    (reply,), _ = svc.answer([{"body": {"images": ["%%", b64(IMGS[0])]}}])
    assert reply.status == 400 and [r["code"] for r in reply.body["results"]] == [400, 413]
    (reply,), stats = svc.answer([{"body": {"images": ["QUJD"] * 17}}])  # over the default 16: refused whole
    assert reply.status == 413 and set(reply.body) == {"error", "code"} and stats.images == 0


def test_dewarp_for_every_image_of_a_multi_image_request():
    import cv2
    import torch

    from polydet.backends.base import Backend
    from polydet.meta import ModelInfo

    class QuadBackend(Backend):
        def __init__(self):
            super().__init__("quad")
            self.info = ModelInfo(names=["page", "photo"], imgsz=224)
            self.row = torch.tensor([20, 30, 200, 40, 190, 200, 30, 190, 0.9, 0.9, 0.05], dtype=torch.float32)

        def forward(self, x):
            return self.row.expand(x.shape[0], 1, 11).clone()

    png = cv2.imencode(".png", np.full((224, 224, 3), 255, np.uint8))[1].tobytes()
    svc = DetectionService(Detector(QuadBackend()), ServiceConfig(dewarp_max_side=100))
    (single,), _ = svc.answer([{"body": {"image": b64(png), "dewarp": True}}])
    (multi,), _ = svc.answer([{"body": {"images": [b64(png), "%%", b64(png)], "dewarp": True}}])
    res = multi.body["results"]
    assert multi.status == 200 and res[0] == res[2] == single.body and res[1]["code"] == 400
    assert set(res[0]["dewarp"]) == {"index", "width", "height", "jpeg_base64"}


def test_bench_helpers_for_several_images_per_request():
    """The load generators' multipart body parses back into the images in fields image0..; compare's ways."""
    from email.parser import BytesParser
    from email.policy import HTTP

    from polydet.bench.common import _answered, multipart_body
    from polydet.bench.compare import served_ways, way_args

    body, ctype = multipart_body(IMGS[:3])
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    parts = list(msg.iter_parts())
    assert [p.get_param("name", header="content-disposition") for p in parts] == ["image0", "image1", "image2"]
    assert [p.get_payload(decode=True) for p in parts] == IMGS[:3]
    ok = json.dumps({"results": [{"width": 1, "height": 1, "detections": []}] * 3}).encode()
    assert _answered(ok, 3) is None and _answered(ok, 2).startswith("not 2 results")
    assert _answered(json.dumps({"results": [{"error": "x", "code": 400}] * 3}).encode(), 3).startswith("not 3")
    assert served_ways("REST,gRPC", "1,8") == ["REST", "REST x8", "gRPC", "gRPC x8"]
    assert served_ways("gRPC", "8") == ["gRPC x8"]
    assert [way_args(w) for w in ("REST", "gRPC x8")] == [("rest", 1), ("grpc", 8)]


def test_closed_loop_by_completion_does_not_undercount_long_calls():
    """Calls of 0.4 s, 2 threads, a 2 s window: 5 calls/s. Counting by start over start-to-last-end says ~4.3."""
    import time

    from polydet.bench.common import closed_loop

    def make(i):
        return lambda: time.sleep(0.4)

    by_end = closed_loop(make, 2, 2.0, warmup_s=0.1, by_completion=True)
    by_start = closed_loop(make, 2, 2.0, warmup_s=0.1)
    assert by_end["req_per_s"] == pytest.approx(5.0, rel=0.12) and by_end["failures"] == 0
    assert by_start["req_per_s"] < 0.95 * by_end["req_per_s"]
