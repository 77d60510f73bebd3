"""The graph passes that change an ONNX artifact's input or output (export/output_passes.py):
``fuse-preprocess`` (uint8 NHWC RGB in) and ``drop-sigmoid`` (logit scores out, logit-space NMS).

Oracles: the eager model on the same 8-bit pixels (the artifact's own outputs, sigmoid applied here with
torch.sigmoid), the plain ONNX artifact's detections, and polygon_nms on the sigmoid of every row."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from polydet import cli
from polydet.backends import load_backend
from polydet.backends.base import META_KEY
from polydet.backends.onnxruntime import OnnxRuntimeBackend
from polydet.errors import ExportError, ModelLoadError
from polydet.export import TOLERANCES, export, load_or_build
from polydet.export import output_passes as OP
from polydet.meta import LAYOUT, LAYOUT_LOGITS, ModelInfo
from polydet.ops import nms as nms_module
from polydet.ops.letterbox import letterbox
from polydet.ops.nms import polygon_nms, polygon_nms_logits
from polydet.pipeline import Detector

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "weights" / "polydet_main_area.pt"
SAMPLES = sorted((REPO / "examples").glob("sample_*.jpg"))
pytestmark = pytest.mark.skipif(not BUNDLED.exists() or not SAMPLES,
                                reason="no bundled weights or examples/sample_*.jpg in this checkout")
VARIANTS = {"plain": (), "fuse": ("fuse-preprocess",), "drop": ("drop-sigmoid",),
            "both": ("drop-sigmoid", "fuse-preprocess", "slim")}
NMS_BACKENDS = ["torch"] + (["numba"] if nms_module.numba_kernel() else [])


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    """The bundled weights exported at 224 with each pass combination (every export runs its parity check)."""
    d = tmp_path_factory.mktemp("outpasses")
    return {k: export(str(BUNDLED), "onnx", out=d / f"{k}.onnx", imgsz=224, passes=p) for k, p in VARIANTS.items()}


@pytest.fixture(scope="module")
def pixels():
    """The example photos letterboxed to 224: (3, 224, 224, 3) uint8 RGB."""
    return np.stack([letterbox(np.asarray(Image.open(p).convert("RGB")), 224)[0] for p in SAMPLES])


def _eager(pixels):
    model, _ = load_or_build(str(BUNDLED))
    with torch.inference_mode():
        return model.eval()(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)


@pytest.mark.parametrize("name", ["fuse", "drop", "both"])
def test_each_pass_matches_the_eager_model_on_photos(arts, pixels, name):
    path, export_diff = arts[name]
    assert export_diff["corners_px"] <= TOLERANCES["fp32"]["corners_px"]  # the export's own check passed
    backend = load_backend(path)
    x = torch.from_numpy(pixels) if backend.info.uint8_input else torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255
    raw = backend.raw(x)
    got = torch.cat((raw[..., :8], raw[..., 8:].sigmoid()), -1) if backend.info.logit_scores else raw
    ref = _eager(pixels)
    assert got.shape == ref.shape == (3, 3 * (7 * 7 + 14 * 14 + 28 * 28), 11)
    assert float((got[..., :8] - ref[..., :8]).abs().max()) <= TOLERANCES["fp32"]["corners_px"]
    assert float((got[..., 8:] - ref[..., 8:]).abs().max()) <= TOLERANCES["fp32"]["scores"]
    if backend.info.logit_scores:  # logits indeed: not in [0, 1], and __call__ gives the probabilities
        assert float(raw[..., 8].min()) < -1 and float((backend(x) - got).abs().max()) < 1e-6


def test_the_graphs_and_their_metadata_say_what_changed(arts):
    graphs = {k: onnx.load(str(p)) for k, (p, _) in arts.items()}
    inputs = {k: g.graph.input[0].type.tensor_type for k, g in graphs.items()}
    assert inputs["plain"].elem_type == onnx.TensorProto.FLOAT and inputs["drop"].elem_type == onnx.TensorProto.FLOAT
    for k in ("fuse", "both"):
        assert inputs[k].elem_type == onnx.TensorProto.UINT8
        assert [d.dim_param or d.dim_value for d in inputs[k].shape.dim] == ["batch", 224, 224, 3]
    sigmoids = {k: sum(n.op_type == "Sigmoid" for n in g.graph.node) for k, g in graphs.items()}
    assert sigmoids["plain"] - sigmoids["drop"] == 3 == sigmoids["fuse"] - sigmoids["both"]  # one per head level
    for k, passes in VARIANTS.items():
        meta = json.loads({p.key: p.value for p in graphs[k].metadata_props}[META_KEY])
        assert meta["passes"] == list(passes)
        assert meta["layout"] == (LAYOUT_LOGITS if "drop-sigmoid" in passes else LAYOUT)
        info = load_backend(arts[k][0]).info
        assert (info.uint8_input, info.logit_scores) == ("fuse-preprocess" in passes, "drop-sigmoid" in passes)


def test_the_pipeline_feeds_uint8_nhwc_and_finds_the_same_polygons(arts):
    images = [p.read_bytes() for p in SAMPLES]
    plain = Detector.from_artifact(arts["plain"][0])
    prepared = plain.preprocessor(images)
    assert prepared.batch.dtype == torch.float32 and prepared.batch.shape == (3, 3, 224, 224)  # unchanged
    ref = plain.detect(images)
    assert sum(len(r.scores) for r in ref) >= 3  # the photos hold pages: a comparison that can fail
    for k in ("fuse", "drop", "both"):
        det = Detector.from_artifact(arts[k][0])
        batch = det.preprocessor(images).batch
        if k == "drop":
            assert batch.dtype == torch.float32
        else:
            assert batch.dtype == torch.uint8 and batch.shape == (3, 224, 224, 3)
            assert torch.equal(batch.permute(0, 3, 1, 2).float() / 255, prepared.batch)  # same pixels, RGB
        for r, g in zip(ref, det.detect(images)):
            np.testing.assert_array_equal(g.class_ids, r.class_ids)
            np.testing.assert_allclose(g.polygons, r.polygons, atol=1e-3, rtol=0)
            np.testing.assert_allclose(g.scores, r.scores, atol=1e-5, rtol=0)  # probabilities, not logits
            assert g.scores.min() > 0.25 and g.scores.max() <= 1


def test_polydet_predict_gives_the_same_detections(arts, capsys):
    def predict(path):
        assert cli.main(["predict", "--model", str(path), "--json", *map(str, SAMPLES)]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    ref, got = predict(arts["plain"][0]), predict(arts["both"][0])
    assert [r["image"] for r in got] == [r["image"] for r in ref] == list(map(str, SAMPLES))
    assert sum(len(r["detections"]) for r in ref) >= 3
    for r, g in zip(ref, got):
        assert [d["class_name"] for d in g["detections"]] == [d["class_name"] for d in r["detections"]]
        for dr, dg in zip(r["detections"], g["detections"]):  # JSON rounds to 0.01 px and 1e-5
            assert abs(dg["score"] - dr["score"]) <= 2e-5
            assert np.abs(np.subtract(dg["polygon"], dr["polygon"])).max() <= 0.011


def _oracle(pred: torch.Tensor) -> torch.Tensor:
    """Every row's scores through the sigmoid (float64, rounded once): what sigmoid NMS would see."""
    return torch.cat((pred[..., :8], torch.sigmoid(pred[..., 8:].double()).float()), -1)


def _same_rows(pred, conf, backend, **kw):
    got = polygon_nms_logits(pred, conf, backend=backend, **kw)
    ref = polygon_nms(_oracle(pred), conf, backend=backend, **kw)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert torch.equal(g, r), (g, r)
    return got


@pytest.mark.parametrize("backend", NMS_BACKENDS)
@pytest.mark.parametrize("conf", [0.0, 0.001, 0.25, 0.6, 0.999, 1.0])
def test_logit_nms_keeps_the_rows_of_sigmoid_nms_on_real_predictions(arts, pixels, backend, conf):
    logits = load_backend(arts["drop"][0]).raw(torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255)
    for multi_label in (False, True):
        kept = _same_rows(logits, conf, backend, iou=0.45, multi_label=multi_label, max_det=300)
        if conf == 0.25:
            assert sum(len(k) for k in kept) >= 3


@pytest.mark.parametrize("backend", NMS_BACKENDS)
def test_logit_nms_at_the_threshold_itself(backend):
    """obj logits a few float32 steps either side of logit(conf): the rows sigmoid NMS keeps, no more."""
    conf = 0.25
    t = np.float32(np.log(conf / (1 - conf)))
    objs = [t]
    for _ in range(6):
        objs = [np.nextafter(objs[0], np.float32(-1)), *objs, np.nextafter(objs[-1], np.float32(1))]
    rows = [[10 * i, 0, 10 * i + 8, 0, 10 * i + 8, 8, 10 * i, 8, float(o), 20.0, -20.0] for i, o in enumerate(objs)]
    pred = torch.tensor([rows], dtype=torch.float32)
    kept = _same_rows(pred, conf, backend, iou=0.45)
    assert 0 < len(kept[0]) < len(objs)  # the threshold falls inside: some pass, some do not


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), conf=st.floats(0, 1), iou=st.floats(0.05, 0.95),
       n=st.integers(0, 60), multi_label=st.booleans(), agnostic=st.booleans(), scale=st.floats(0.5, 12))
def test_logit_nms_keeps_the_rows_of_sigmoid_nms_on_random_predictions(seed, conf, iou, n, multi_label,
                                                                       agnostic, scale):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(2, n, 1, 2, generator=g) * 100 + torch.rand(2, n, 4, 2, generator=g) * 30
    scores = torch.randn(2, n, 4, generator=g) * scale  # obj + 3 classes, logits
    pred = torch.cat((xy.reshape(2, n, 8), scores), -1)
    for backend in NMS_BACKENDS:
        _same_rows(pred, conf, backend, iou=iou, multi_label=multi_label, agnostic=agnostic, max_det=50)


def _with_meta(src: Path, dst: Path, **changes) -> Path:
    m = onnx.load(str(src))
    meta = {p.key: p.value for p in m.metadata_props}
    info = dataclasses.asdict(ModelInfo.from_json(meta[META_KEY]))
    del m.metadata_props[:]
    m.metadata_props.add(key=META_KEY, value=json.dumps({**info, **changes}, default=str))
    onnx.save(m, str(dst))
    return dst


def test_backends_refuse_what_they_cannot_honour(arts, tmp_path):
    class NoContractPasses(OnnxRuntimeBackend):  # a runtime that runs the graph but knows neither pass
        capabilities = dataclasses.replace(OnnxRuntimeBackend.capabilities, passes=())

    with pytest.raises(ModelLoadError, match=r"cannot honour graph pass 'drop-sigmoid' \(the artifact outputs"):
        NoContractPasses(arts["drop"][0]).check()
    with pytest.raises(ModelLoadError, match=r"cannot honour graph pass 'fuse-preprocess' \(the artifact takes"):
        NoContractPasses(arts["fuse"][0]).check()
    NoContractPasses(arts["plain"][0]).check()  # a plain artifact is still fine there
    unknown = _with_meta(arts["plain"][0], tmp_path / "u.onnx", passes=["slim", "frobnicate"])
    with pytest.raises(ModelLoadError, match=r"graph pass 'frobnicate', which this polydet does not know"):
        load_backend(unknown)
    hidden = _with_meta(arts["drop"][0], tmp_path / "h.onnx", layout=LAYOUT)  # logits under the plain layout
    with pytest.raises(ModelLoadError, match="contradicts passes"):
        load_backend(hidden)
    lost = _with_meta(arts["fuse"][0], tmp_path / "l.onnx", passes=[])  # a uint8 graph whose metadata lost the pass
    with pytest.raises(ModelLoadError, match=r"takes tensor\(uint8\) but its metadata records passes \(\)"):
        load_backend(lost)


def test_a_pass_twice_or_on_a_foreign_head_is_refused(arts, tmp_path):
    for name, fn in (("fuse", OP.fuse_preprocess), ("drop", OP.drop_sigmoid)):
        target = tmp_path / f"{name}.onnx"
        target.write_bytes(arts[name][0].read_bytes())
        with pytest.raises(ExportError, match="already|no Sigmoid"):
            fn(target, load_backend(target).info)
        assert target.read_bytes() == arts[name][0].read_bytes()


def test_a_dynamic_export_takes_uint8_of_any_stride_aligned_size(tmp_path):
    """--dynamic: the export's own check runs at 64x64 and 128x32; the Detector letterboxes rectangles."""
    out, _ = export("random", "onnx", out=tmp_path / "d.onnx", imgsz=64, dynamic=True,
                    passes=["fuse-preprocess", "drop-sigmoid"])
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "height", "width", 3]
    det = Detector.from_artifact(out)
    wide = np.full((20, 64, 3), 200, np.uint8)
    assert tuple(det.preprocessor([wide]).batch.shape) == (1, 32, 64, 3)
    assert det.detect([wide])[0].ok


def test_an_int8_export_is_calibrated_on_the_float_graph_then_rewritten(tmp_path):
    """The quantizer calibrates the graph as traced (float NCHW); the contract passes run after it."""
    out, diff = export("random", "onnx", out=tmp_path / "q.onnx", imgsz=64, precision="int8",
                       passes=["fuse-preprocess", "drop-sigmoid"])
    g = onnx.load(str(out)).graph
    assert any(n.op_type == "QuantizeLinear" for n in g.node)
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert load_backend(out).info.passes == ("fuse-preprocess", "drop-sigmoid")
    assert diff["scores"] <= TOLERANCES["int8"]["scores"]
