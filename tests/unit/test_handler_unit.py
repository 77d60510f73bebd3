"""The TorchServe handler without a server: a real ts.context.Context, metrics cache and artifact."""

from __future__ import annotations

import base64
import importlib.util
import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("ts", reason="torchserve is not installed (pip install 'polydet[serve]')")

from ts.context import Context, RequestProcessor  # noqa: E402
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl  # noqa: E402

from polydet.backends.base import Backend  # noqa: E402
from polydet.errors import ConfigError, InvalidInputError  # noqa: E402
from polydet.meta import ModelInfo  # noqa: E402
from polydet.pipeline import DetectOptions, Detector  # noqa: E402
from polydet.serving.config import ServiceConfig  # noqa: E402
from polydet.serving.service import METRICS, DetectionService, parse_request  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
METRICS_YAML = REPO / "src" / "polydet" / "serving" / "metrics.yaml"


def load_handler_module():
    spec = importlib.util.spec_from_file_location("polydet_handler", REPO / "handlers" / "polydet_handler.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def jpeg(w=320, h=240, seed=0) -> bytes:
    import cv2

    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_context(tmp_path, artifact: Path, handler_section=None, batch=4) -> Context:
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / artifact.name).write_bytes(artifact.read_bytes())
    manifest = {"model": {"modelName": "polydet", "serializedFile": artifact.name, "handler": "polydet_handler.py"}}
    metrics = MetricsCacheYamlImpl(str(METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = "polydet"
    cfg = {"batchSize": batch, "handler": handler_section} if handler_section is not None else {"batchSize": batch}
    return Context("polydet", str(model_dir), manifest, batch, None, "0.12.0", metrics=metrics,
                   model_yaml_config=cfg)


def start_batch(ctx: Context, n: int) -> None:
    """What ts.service.Service.predict does before calling handle."""
    ctx.request_ids = {i: f"req-{i}" for i in range(n)}
    ctx.request_processor = [RequestProcessor({}) for _ in range(n)]
    ctx.metrics.request_ids = ctx.request_ids


def test_the_module_defines_exactly_one_class_and_no_handle_function():
    mod = load_handler_module()
    classes = [c for _, c in inspect.getmembers(mod, inspect.isclass) if c.__module__ == mod.__name__]
    assert [c.__name__ for c in classes] == ["PolydetHandler"]
    assert not hasattr(mod, "handle")  # TorchServe would take a module-level handle() as the entry point


def test_handler_config_refuses_unknown_keys_and_bad_values():
    assert ServiceConfig.from_section(None) == ServiceConfig()
    cfg = ServiceConfig.from_section({"options": {"conf": 0.5, "max_det": 7}})
    assert cfg.options == DetectOptions(conf=0.5, max_det=7)
    assert ServiceConfig.from_section(cfg.to_section()) == cfg
    for bad in ({"conf": 0.5}, {"options": {"confidence": 0.5}}, {"options": {"conf": 1.5}}, {"options": {"max_det": 0}},
                {"options": {"multi_label": "yes"}}, {"options": ["conf"]}, {"max_pixels": -1},
                {"dewarp_jpeg_quality": 101}, {"torch_threads": 0}, ["conf"]):
        with pytest.raises(ConfigError):
            ServiceConfig.from_section(bad)


def test_initialize_fails_on_an_unknown_handler_key(tmp_path, artifacts):
    handler = load_handler_module().PolydetHandler()
    with pytest.raises(ConfigError, match="unknown key"):
        handler.initialize(make_context(tmp_path, artifacts["torchscript"], {"options": {"conf": 0.3}, "thresh": 1}))


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_initialize_loads_the_nms_kernel_before_the_first_request(tmp_path, artifacts, monkeypatch, caplog):
    from polydet.ops import nms

    monkeypatch.delenv("POLYDET_NMS", raising=False)
    monkeypatch.setattr(nms, "_kernel", None)  # as in a fresh worker
    handler = load_handler_module().PolydetHandler()
    with caplog.at_level(logging.INFO):
        handler.initialize(make_context(tmp_path, artifacts["torchscript"]))
    assert nms._kernel is not None and nms._kernel is nms.numba_kernel()
    assert handler.service.detector.nms_backend == "numba"
    assert any("NMS numba" in m for m in caplog.messages if m.startswith("polydet: "))


@pytest.mark.parametrize("section, want", [(None, [1, 1, 3]), ({"warmup": False}, [])])
def test_initialize_runs_the_model_on_blank_batches_unless_told_not_to(tmp_path, artifacts, monkeypatch, caplog,
                                                                        section, want):
    """The first TorchScript calls profile the graph (several times slower): the worker pays them while it
    starts, at batch 1, 1 and the archive's batchSize, through the real pipeline."""
    seen = []
    real = Detector.detect

    def spy(self, images, *a, **kw):
        seen.append(len(images))
        return real(self, images, *a, **kw)

    monkeypatch.setattr(Detector, "detect", spy)
    handler = load_handler_module().PolydetHandler()
    with caplog.at_level(logging.INFO):
        handler.initialize(make_context(tmp_path, artifacts["torchscript"], section, batch=3))
    assert seen == want
    (line,) = [m for m in caplog.messages if m.startswith("polydet: ")]
    assert ("warmed up at batch (1, 1, 3)" in line) == bool(want), line
    start_batch(handler_ctx := make_context(tmp_path, artifacts["torchscript"], section, batch=3), 1)
    (out,) = handler.handle([{"body": jpeg()}], handler_ctx)
    assert set(json.loads(out)) == {"width", "height", "detections"}


def test_handler_config_warmup_must_be_a_bool():
    assert ServiceConfig.from_section({"warmup": False}).warmup is False
    with pytest.raises(ConfigError, match="warmup"):
        ServiceConfig.from_section({"warmup": "no"})


def test_parse_request_forms():
    img = jpeg()
    assert parse_request({"body": bytearray(img)}).image == img  # raw REST body
    assert parse_request({"whatever_field": img}).image == img  # multipart, one field
    assert parse_request({"data": img}).image == img  # gRPC
    r = parse_request({"body": {"image": base64.b64encode(img).decode(), "conf": 0.4, "dewarp": True}})
    assert (r.image, r.options, r.dewarp) == (img, {"conf": 0.4}, True)
    r = parse_request({"data": json.dumps({"image": base64.b64encode(img).decode()}).encode()})  # JSON bytes
    assert (r.image, r.options, r.dewarp) == (img, {}, False)
    for bad in ({}, {"body": {"conf": 0.4}}, {"body": {"image": "%%%"}},
                {"body": [1]}, {"body": b"{not json"}, {"body": {"image": 3}},
                {"body": {"image": "", "dewarp": 1}}):
        with pytest.raises(InvalidInputError):
            parse_request(bad)


def test_handle_answers_a_mixed_batch_and_records_declared_metrics(tmp_path, artifacts, caplog):
    ctx = make_context(tmp_path, artifacts["torchscript"], {"options": {"conf": 0.001, "max_det": 5}})
    handler = load_handler_module().PolydetHandler()
    handler.initialize(ctx)
    declared = sorted(ctx.metrics.cache_keys())
    good = jpeg()
    batch = [{"body": bytearray(good)}, {"body": b"garbage"}, {"body": {"image": base64.b64encode(good).decode()}},
             {"body": {"image": base64.b64encode(good).decode(), "max_det": 0}}, {"file": good}]
    start_batch(ctx, len(batch))
    with caplog.at_level(logging.INFO):
        out = handler.handle(batch, ctx)
    assert len(out) == len(batch)
    bodies = [json.loads(o) for o in out]
    statuses = [ctx.get_response_status(i)[0] for i in range(len(batch))]
    assert statuses == [200, 400, 200, 400, 200]
    want = Detector.from_artifact(artifacts["torchscript"], options=DetectOptions(conf=0.001, max_det=5)).detect([good])[0]
    want = want.to_dict()
    assert want["detections"]
    for i in (0, 2, 4):
        assert bodies[i] == want
    for i in (1, 3):
        assert set(bodies[i]) == {"error", "code"} and bodies[i]["code"] == 400
        assert ctx.get_response_status(i)[1] == bodies[i]["error"][:200]
    assert all(ctx.get_response_content_type(i) == "application/json" for i in range(len(batch)))
    # Every metric the handler records is declared with the same type (else TorchServe drops it).
    assert sorted(ctx.metrics.cache_keys()) == declared
    emitted = {line.split("[METRICS]", 1)[1].split(".", 1)[0] for line in caplog.messages if "[METRICS]" in line}
    assert emitted >= set(METRICS.values())


def test_metrics_yaml_declares_every_handler_metric_with_model_dimensions():
    spec = yaml.safe_load(METRICS_YAML.read_text())["model_metrics"]
    declared = {m["name"]: m["dimensions"] for kind in spec.values() for m in kind}
    for name in METRICS.values():
        assert declared[name][-2:] == ["ModelName", "Level"], name
    assert "ts_inference_requests_total" in {m["name"] for m in yaml.safe_load(METRICS_YAML.read_text())
                                             ["ts_metrics"]["counter"]}


class QuadBackend(Backend):
    """Answers every image with one known page quad in letterboxed 224 x 224 pixels."""

    def __init__(self, quad):
        super().__init__("quad")
        self.info = ModelInfo(names=["page", "photo"], imgsz=224)
        self.row = torch.tensor([*np.asarray(quad, np.float32).ravel(), 0.9, 0.9, 0.05])

    def forward(self, x):
        return self.row.expand(x.shape[0], 1, 11).clone()


def test_dewarp_returns_the_rectified_crop_of_the_best_quad():
    import cv2

    from polydet.ops.warp import dewarp

    # 448 x 448 image -> scale 0.5 into 224: the quad below is (40,60),(400,80),(380,400),(60,380) in the image.
    quad = [[20, 30], [200, 40], [190, 200], [30, 190]]
    img = np.zeros((448, 448, 3), np.uint8)
    cv2.fillConvexPoly(img, (np.array(quad) * 2).astype(np.int32), (255, 255, 255))
    data = cv2.imencode(".png", img)[1].tobytes()
    service = DetectionService(Detector(QuadBackend(quad)), ServiceConfig(dewarp_max_side=200))
    req = {"body": {"image": base64.b64encode(data).decode(), "dewarp": True}}
    (reply,), stats = service.answer([req])
    res = reply.body
    assert reply.status == 200 and stats.images == 1 and stats.detections == 1
    np.testing.assert_allclose(res["detections"][0]["polygon"], np.array(quad) * 2, atol=0.01)
    d = res["dewarp"]
    crop = cv2.imdecode(np.frombuffer(base64.b64decode(d["jpeg_base64"]), np.uint8), cv2.IMREAD_COLOR)
    assert d["index"] == 0 and crop.shape == (d["height"], d["width"], 3) and max(crop.shape[:2]) == 200
    assert crop[5:-5, 5:-5].min() > 200  # the whole crop is the white page
    want = dewarp(img, res["detections"][0]["polygon"], max_side=200)
    assert np.abs(crop.astype(int) - want.astype(int)).mean() < 3


def test_a_failing_model_only_fails_its_own_requests():
    class Flaky(QuadBackend):
        def forward(self, x):
            if x.shape[0] > 1 or float(x.mean()) > 0.9:  # the batch, and then the all-white image alone
                raise RuntimeError("boom")
            return super().forward(x)

    import cv2

    dark = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    white = cv2.imencode(".png", np.full((224, 224, 3), 255, np.uint8))[1].tobytes()
    service = DetectionService(Detector(Flaky([[20, 30], [200, 40], [190, 200], [30, 190]])), ServiceConfig())
    replies, _ = service.answer([{"body": dark}, {"body": white}, {"body": b"bad"}])
    bodies, statuses = [r.body for r in replies], [r.status for r in replies]
    assert statuses == [200, 500, 400]
    assert len(bodies[0]["detections"]) == 1
    assert bodies[1] == {"error": "internal error: RuntimeError", "code": 500}


def test_handler_metrics_can_be_turned_off(tmp_path, artifacts, caplog):
    """handler.metrics: false -> the handler records none of its per-batch metrics (each is a line the
    worker prints and the frontend parses); the answer is the same."""
    ctx = make_context(tmp_path, artifacts["torchscript"], {"metrics": False, "warmup": False})
    handler = load_handler_module().PolydetHandler()
    handler.initialize(ctx)
    start_batch(ctx, 1)
    with caplog.at_level(logging.INFO):
        (out,) = handler.handle([{"body": jpeg()}], ctx)
    assert set(json.loads(out)) == {"width", "height", "detections"}
    assert not [m for m in caplog.messages if "[METRICS]" in m]
    with pytest.raises(ConfigError, match="metrics"):
        ServiceConfig.from_section({"metrics": "no"})


def test_a_request_cannot_ask_for_more_than_the_servers_limits():
    """handler.max_det_limit: a request above it gets a 400 naming the limit (its answer would be ~120
    bytes per detection); handler.max_candidates bounds NMS whatever conf and multi_label ask."""
    import cv2

    quad = [[20, 30], [200, 40], [190, 200], [30, 190]]
    data = cv2.imencode(".png", np.zeros((224, 224, 3), np.uint8))[1].tobytes()
    config = ServiceConfig(options=DetectOptions(max_det=40), max_det_limit=50)
    service = DetectionService(Detector(QuadBackend(quad), max_candidates=7), config)
    replies, _ = service.answer([{"body": {"image": base64.b64encode(data).decode(), "max_det": 51}},
                                 {"body": {"image": base64.b64encode(data).decode(), "max_det": 50}}])
    assert [r.status for r in replies] == [400, 200]
    assert replies[0].body == {"error": "max_det 51 is above this server's limit of 50 (handler.max_det_limit)",
                               "code": 400}
    seen = []
    real = Detector._nms

    def spy(self, pred, o):
        seen.append(self.max_candidates)
        return real(self, pred, o)

    import unittest.mock

    with unittest.mock.patch.object(Detector, "_nms", spy):
        (reply,), _ = service.answer([{"body": data}])
    assert reply.status == 200, reply.body
    assert seen == [7]
    for bad in ({"max_det_limit": 0}, {"max_candidates": -1}, {"max_det_limit": 50}):  # the last: options' 100
        with pytest.raises(ConfigError):
            ServiceConfig.from_section(bad)


def test_detect_images_gives_typed_results_in_order_with_errors_in_place():
    import cv2

    from polydet.errors import InvalidInputError
    from polydet.options import DetectOptions
    from polydet.results import Detections, ImageError

    quad = [[20, 30], [200, 40], [190, 200], [30, 190]]
    img = cv2.imencode(".png", np.zeros((448, 448, 3), np.uint8))[1].tobytes()
    service = DetectionService(Detector(QuadBackend(quad)), ServiceConfig(DetectOptions(max_det=5), max_det_limit=5))
    results, stats = service.detect_images([img, b"not an image", img], {"conf": 0.5})
    assert [type(r) for r in results] == [Detections, ImageError, Detections]
    assert results[1].status == 400 and (stats.batch, stats.images, stats.bad) == (3, 2, 1)
    np.testing.assert_allclose(results[0].polygons[0], np.array(quad) * 2, atol=1e-3)
    assert results[2].names[int(results[2].class_ids[0])] == "page"
    with pytest.raises(InvalidInputError, match="max_det 9 is above this server's limit of 5"):
        service.detect_images([img], {"max_det": 9})
