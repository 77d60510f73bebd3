"""Artifacts as users make them: a batch-1 static ONNX (the seed's export.py without --dynamic) and a
TorchScript whose forward returns a tuple both run batches of mixed image sizes, and give the eager
model's detections; an artifact with another output layout is refused at load."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from artifact_helpers import assert_same_detections, mixed_images, seed_onnx
from artifact_helpers import tuple_torchscript as tuple_torchscript_of

from polydet.backends import load_backend
from polydet.backends.base import META_KEY
from polydet.errors import ModelLoadError
from polydet.meta import ModelInfo
from polydet.pipeline import DetectOptions, Detector
from polydet.results import Detections

OPTS = DetectOptions(conf=0.0003, max_det=20)  # random weights: obj prior ~1e-3


def images():
    return mixed_images(seed=1, shapes=((300, 500, 3), (640, 200, 3), (224, 224, 3), (50, 90, 3), (400, 400, 3)))


def contract(batch):
    return [r.to_dict() for r in batch]


@pytest.fixture(scope="module")
def eager(artifacts):
    from polydet.model import load_model

    model, info = load_model(artifacts["ckpt"])
    return model.eval(), info


@pytest.fixture(scope="module")
def static_onnx(eager, tmp_path_factory):
    """Exported as the seed's export.py does it: fixed (1, 3, 224, 224) input, no polydet metadata."""
    return seed_onnx(eager[0], tmp_path_factory.mktemp("fixed") / "seed_b1.onnx", 224)


@pytest.fixture(scope="module")
def tuple_torchscript(eager, tmp_path_factory):
    model, info = eager  # a second output the pipeline must ignore
    return tuple_torchscript_of(model, info, tmp_path_factory.mktemp("tuple") / "tuple_out.torchscript",
                                extra=lambda out: out[..., :8].sum(-1))


def test_a_static_batch_one_onnx_reports_its_capacity_and_runs_any_batch(static_onnx, artifacts):
    with pytest.warns(UserWarning, match="carries no polydet metadata"):
        backend = load_backend(static_onnx)
    assert backend.max_batch == 1 and load_backend(artifacts["onnx"]).max_batch is None
    x = torch.rand(3, 3, 224, 224)
    ref = load_backend(artifacts["onnx"])(x)
    out = backend(x)  # three calls of one image each
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["static_onnx", "tuple_torchscript"])
def test_user_artifacts_serve_batches_of_mixed_sizes_like_the_eager_model(kind, request, artifacts):
    path = request.getfixturevalue(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the seed-style ONNX has no metadata: class0, class1
        det = Detector.from_artifact(path, options=OPTS)
    want = contract(Detector.from_artifact(artifacts["ckpt"], options=OPTS).detect(images()))
    got = det.detect(images())
    assert all(isinstance(r, Detections) for r in got) and sum(len(r) for r in got) > 0
    assert [(a["width"], a["height"]) for a in contract(got)] == [(b["width"], b["height"]) for b in want]
    assert_same_detections(contract(got), want, px=0.05, score=1e-3)


def test_a_fixed_batch_larger_than_the_input_is_padded(eager, tmp_path):
    model, info = eager
    path = seed_onnx(model, tmp_path / "b4.onnx", 224, batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = load_backend(path)
    assert backend.max_batch == 4
    x = torch.rand(6, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
    torch.testing.assert_close(backend(x), ref, atol=1e-3, rtol=0)  # 4 + (2 padded to 4)


def test_an_artifact_with_another_layout_is_refused(eager, tmp_path):
    model, info = eager
    other = json.loads(info.to_json())
    other["layout"] = "polygon-yolov5/v2: coords and scores as two outputs"
    path = tmp_path / "v2.torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, torch.zeros(1, 3, 224, 224), strict=False).save(
            str(path), _extra_files={META_KEY: json.dumps(other)})
    with pytest.raises(ModelLoadError, match="output layout .* is not one polydet decodes"):
        load_backend(path)
    assert ModelInfo.from_json(json.dumps(other)).layout.startswith("polygon-yolov5/v2")
