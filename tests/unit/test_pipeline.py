import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polydet.backends.base import Backend
from polydet.errors import InvalidInputError
from polydet.meta import ModelInfo
from polydet.ops import nms as nms_module
from polydet.pipeline import DetectOptions, Detector
from polydet.preprocess import RGB
from polydet.results import BatchResult, Detections, ImageError, Timings

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "weights" / "polydet_main_area.pt"
SAMPLES = sorted((REPO / "examples").glob("sample_*.jpg"))
needs_numba = pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
needs_bundled = pytest.mark.skipif(not BUNDLED.exists() or not SAMPLES,
                                   reason="no bundled weights or examples/sample_*.jpg in this checkout")


class FixedBackend(Backend):
    """Answers every image with the same letterboxed-pixel rows: a known answer for the pipeline."""

    def __init__(self, rows, info=None):
        super().__init__("fixed")
        self.rows = torch.tensor(rows, dtype=torch.float32)
        self.info = info or ModelInfo(names=["page", "photo"], imgsz=224)
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
        return self.rows.expand(x.shape[0], *self.rows.shape).clone()


# A page quad in letterboxed 224x224 pixels, obj 0.9, cls (0.8, 0.1) -> score 0.72 class 0;
# a weaker photo quad, and noise below threshold.
ROWS = [[20, 40, 200, 40, 200, 180, 20, 180, 0.9, 0.8, 0.1],
        [30, 50, 100, 50, 100, 120, 30, 120, 0.6, 0.1, 0.9],
        [0, 0, 10, 0, 10, 10, 0, 10, 0.1, 0.9, 0.9]]


def dicts(batch: BatchResult) -> list[dict]:
    """The output contract of each result (what a transport sends)."""
    return [r.to_dict() for r in batch]


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_polygons_come_back_in_original_pixels():
    det = Detector(FixedBackend(ROWS))
    img = np.zeros((480, 640, 3), np.uint8)  # scale 0.35, pad top 28
    batch = det.detect([img, png(np.zeros((100, 50, 3), np.uint8))])
    assert all(isinstance(r, Detections) for r in batch)
    assert batch[0].polygons.dtype == np.float64 and batch[0].polygons.shape == (2, 4, 2)
    assert batch[0].scores.dtype == np.float32 and batch[0].class_ids.tolist() == [0, 1]
    res = dicts(batch)
    r0 = res[0]
    assert r0["width"] == 640 and r0["height"] == 480
    assert [d["class_name"] for d in r0["detections"]] == ["page", "photo"]
    assert r0["detections"][0]["score"] == pytest.approx(0.72)
    assert r0["detections"][1]["score"] == pytest.approx(0.54)
    expected = (np.array(ROWS[0][:8]).reshape(4, 2) - [0, 28]) / 0.35
    np.testing.assert_allclose(r0["detections"][0]["polygon"], expected, atol=0.01)
    # second image: 100x50 (h x w) -> scale 2.24, pad left 56; clamped to the image
    r1 = res[1]
    assert (r1["width"], r1["height"]) == (50, 100)
    p = np.array(r1["detections"][0]["polygon"])
    np.testing.assert_allclose(p, np.clip((np.array(ROWS[0][:8]).reshape(4, 2) - [56, 0]) / 2.24, 0, [50, 100]),
                               atol=0.01)
    assert isinstance(batch.timings, Timings) and min(vars(batch.timings).values()) > 0
    # unrounded in the result, rounded only in the contract
    np.testing.assert_allclose(batch[0].polygons[0], expected, atol=1e-4)


def test_per_image_options_and_empty_results():
    det = Detector(FixedBackend(ROWS))
    img = np.zeros((224, 224, 3), np.uint8)
    res = dicts(det.detect([img, img, img], [DetectOptions(), DetectOptions(conf=0.6), DetectOptions(conf=0.95)]))
    assert [len(r["detections"]) for r in res] == [2, 1, 0]
    assert res[2]["detections"] == []


def test_batch_of_mixed_sizes_uses_one_forward():
    backend = FixedBackend(ROWS)
    det = Detector(backend)
    det.detect([np.zeros((10, 2000, 3), np.uint8), np.zeros((1600, 900), np.uint8), np.zeros((5, 5, 4), np.uint8)])
    assert backend.seen == [(3, 3, 224, 224)]


def test_dynamic_artifact_letterboxes_rectangles_padded_to_batch_max():
    backend = FixedBackend(ROWS, ModelInfo(imgsz=320, letterbox="auto", dynamic=True))
    det = Detector(backend)
    det.detect([np.zeros((480, 640, 3), np.uint8), np.zeros((640, 320, 3), np.uint8)])
    assert backend.seen == [(2, 3, 320, 320)]  # 256x320 and 320x160 padded to the batch max
    det.detect([np.zeros((480, 640, 3), np.uint8)])
    assert backend.seen[-1] == (1, 3, 256, 320)


def test_bad_inputs_fail_only_themselves():
    backend = FixedBackend(ROWS)
    det = Detector(backend)
    good = np.zeros((224, 224, 3), np.uint8)
    batch = det.detect([b"", good, np.zeros((4, 4, 3), np.float64), "not an image", good])
    assert [type(r).__name__ for r in batch] == ["ImageError", "Detections", "ImageError", "ImageError", "Detections"]
    assert batch[0] == ImageError(400, "empty image: the request body has no bytes")
    assert batch[2].status == 400 and "dtype must be uint8 or uint16" in batch[2].reason
    assert batch[3].status == 400 and "expected bytes or a numpy array, got str" in batch[3].reason
    assert backend.seen == [(2, 3, 224, 224)]  # the good ones, in one forward
    assert [p is None for p in batch.pixels] == [True, False, True, True, False]
    assert len(det.detect([])) == 0 and det.detect([]).timings == Timings()


@pytest.mark.parametrize("d,msg", [
    ({"conf": "abc"}, "conf must be a number"), ({"conf": 5}, "conf must be a number"),
    ({"iou": -0.1}, "iou must be"), ({"max_det": -1}, "max_det must be"), ({"max_det": 2.5}, "max_det"),
    ({"max_det": True}, "max_det"), ({"agnostic": "yes"}, "agnostic must be true or false"),
    ({"colour": 1}, "unknown option"),
])
def test_options_validation(d, msg):
    with pytest.raises(InvalidInputError, match=msg):
        DetectOptions.from_dict(d)


def test_options_from_dict_and_replace():
    o = DetectOptions.from_dict({"conf": 1, "max_det": 5, "agnostic": True})
    assert o == DetectOptions(conf=1.0, max_det=5, agnostic=True) and isinstance(o.conf, float)
    assert o.replace(iou=0.3).iou == 0.3 and o.replace(iou=0.3).max_det == 5


def test_all_backends_agree_end_to_end(artifacts):
    """The same random model as checkpoint, TorchScript and ONNX gives the same detections."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (300, 500, 3), dtype=np.uint8), rng.integers(0, 255, (640, 200, 3), dtype=np.uint8)]
    opts = DetectOptions(conf=0.0003, max_det=20)  # random weights: obj prior ~1e-3
    results = {k: dicts(Detector.from_artifact(artifacts[k], options=opts).detect(imgs))
               for k in ("ckpt", "torchscript", "onnx")}
    ref = results["ckpt"]
    assert sum(len(r["detections"]) for r in ref) > 0
    for k in ("torchscript", "onnx"):
        for a, b in zip(results[k], ref):
            assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
            np.testing.assert_allclose([d["polygon"] for d in a["detections"]], [d["polygon"] for d in b["detections"]],
                                       atol=0.05)
            np.testing.assert_allclose([d["score"] for d in a["detections"]], [d["score"] for d in b["detections"]],
                                       atol=1e-3)


def test_rgb_arrays_skip_the_channel_flip():
    """An RGB-declared array (decode_image(..., rgb=True) output) is taken as is: same answer as the BGR path."""
    rows = [[20, 40, 200, 40, 200, 180, 20, 180, 0.9, 0.8, 0.1]]
    seen = []

    class Spy(FixedBackend):
        def forward(self, x):
            seen.append(x.clone())
            return super().forward(x)

    spy = Spy(rows)
    det = Detector(spy)
    bgr = np.zeros((50, 80, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    a = dicts(det.detect([bgr]))
    b = dicts(det.detect([RGB(np.ascontiguousarray(bgr[..., ::-1]))]))
    assert a == b
    torch.testing.assert_close(seen[0], seen[1])
    assert float(seen[0][0, 2].max()) == pytest.approx(200 / 255)  # blue lands in channel 2 (RGB order)


# -- NMS warm-up ----------------------------------------------------------------------------------------
@needs_numba
def test_building_a_detector_loads_the_nms_kernel(monkeypatch):
    """As in a fresh worker: no kernel loaded yet; building the Detector loads it, detect() reuses it."""
    monkeypatch.delenv("POLYDET_NMS", raising=False)
    monkeypatch.setattr(nms_module, "_kernel", None)
    det = Detector(FixedBackend(ROWS))
    kernel = nms_module._kernel
    assert det.nms_backend == "numba" and kernel is sys.modules["polydet.ops._nms_numba"]
    assert nms_module.numba_kernel() is kernel
    assert len(det.detect([np.zeros((224, 224, 3), np.uint8)])[0]) == 2
    assert nms_module._kernel is kernel
    monkeypatch.setattr(nms_module, "_kernel", None)
    assert Detector(FixedBackend(ROWS), warmup=False).nms_backend is None
    assert nms_module._kernel is None  # warmup=False: left to the first detect


def test_warmup_follows_polydet_nms_and_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(nms_module, "_kernel", None)
    monkeypatch.setenv("POLYDET_NMS", "torch")
    assert Detector(FixedBackend(ROWS)).nms_backend == "torch"
    assert nms_module._kernel is None  # the torch path needs no kernel: nothing loaded
    # numba unavailable (import fails): auto warms up to the torch path, and detection still works.
    monkeypatch.delenv("POLYDET_NMS")
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.delitem(sys.modules, "polydet.ops._nms_numba", raising=False)
    import polydet.ops

    monkeypatch.delattr(polydet.ops, "_nms_numba", raising=False)
    det = Detector(FixedBackend(ROWS))
    assert det.nms_backend == "torch" and nms_module._kernel is False
    assert len(det.detect([np.zeros((224, 224, 3), np.uint8)])[0]) == 2
    # A setting every request would fail on fails at start-up instead.
    monkeypatch.setenv("POLYDET_NMS", "numba")
    with pytest.raises(RuntimeError, match="numba NMS kernel is unavailable"):
        Detector(FixedBackend(ROWS))
    monkeypatch.setenv("POLYDET_NMS", "fast")
    with pytest.raises(ValueError, match="POLYDET_NMS"):
        Detector(FixedBackend(ROWS))


def test_warmup_uses_the_device_of_the_predictions(monkeypatch):
    monkeypatch.delenv("POLYDET_NMS", raising=False)

    class CpuOutputs(FixedBackend):  # e.g. ONNX Runtime on CUDA: outputs come back as numpy, on the CPU
        output_device = torch.device("cpu")

    on_gpu, cpu_out = FixedBackend(ROWS), CpuOutputs(ROWS)
    on_gpu.device = cpu_out.device = torch.device("meta")  # stands in for CUDA here
    on_cpu = nms_module.resolve_backend(None, torch.zeros(1, 1, 10))  # "numba" where numba loads
    # predictions on the GPU: copied to the CPU for the numba kernel where it loads, else the torch path there
    det = Detector(on_gpu)
    assert (det.nms_backend, det.nms_on_cpu) == (on_cpu, on_cpu == "numba")
    det = Detector(cpu_out)
    assert (det.nms_backend, det.nms_on_cpu) == (on_cpu, False)  # already on the CPU: nothing to copy
    monkeypatch.setenv("POLYDET_NMS", "torch")
    det = Detector(on_gpu)
    assert (det.nms_backend, det.nms_on_cpu) == ("torch", False)  # asked for: the torch path, on the GPU


@needs_numba
def test_a_detector_built_without_warmup_decides_the_nms_path_on_its_first_detect(monkeypatch):
    """Predictions reported off the CPU (the copy itself is checked on CUDA in tests/gpu): decided on the
    first detect, and the same detections as the torch path."""
    monkeypatch.delenv("POLYDET_NMS", raising=False)

    class OffCpu(FixedBackend):
        output_device = torch.device("meta")

    det = Detector(OffCpu(ROWS), warmup=False)
    assert det.nms_backend is None
    image = np.zeros((224, 224, 3), np.uint8)
    got = dicts(det.detect([image]))
    assert (det.nms_backend, det.nms_on_cpu) == ("numba", True) and len(got[0]["detections"]) == 2
    monkeypatch.setenv("POLYDET_NMS", "torch")
    assert dicts(Detector(OffCpu(ROWS)).detect([image])) == got


_FRESH_WORKER = """
import json, sys
from pathlib import Path
from polydet.ops import nms
from polydet.pipeline import Detector
before = "polydet.ops._nms_numba" in sys.modules
det = Detector.from_artifact(sys.argv[1])
kernel = nms._kernel
compiled = len(kernel.nms_image.signatures)
det.detect([Path(p).read_bytes() for p in sys.argv[2:]])
print(json.dumps({"before": before, "nms": det.nms_backend, "compiled": compiled,
                  "after_detect": len(kernel.nms_image.signatures), "loaded": bool(kernel)}))
"""


@needs_numba
@needs_bundled
def test_a_fresh_process_compiles_nothing_on_its_first_detect():
    """What a TorchServe worker sees: the kernel is loaded (or compiled) while the Detector is built;
    the first detect() adds no compiled signature."""
    env = {k: v for k, v in os.environ.items() if k != "POLYDET_NMS"}
    r = subprocess.run([sys.executable, "-c", _FRESH_WORKER, str(BUNDLED), *map(str, SAMPLES)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["before"] is False and out["loaded"] and out["nms"] == "numba"
    assert out["compiled"] >= 1 and out["after_detect"] == out["compiled"]


@needs_numba
@needs_bundled
def test_bundled_model_detections_are_identical_on_both_nms_paths(monkeypatch):
    """POLYDET_NMS=torch and POLYDET_NMS=numba: the same detections from the bundled weights on the
    example photos, at the served defaults and at a low threshold (hundreds of candidates per image),
    and the same kept rows bit for bit."""
    images = [p.read_bytes() for p in SAMPLES]
    low = DetectOptions(conf=0.001, max_det=300)
    results, rows = {}, {}
    for name in ("torch", "numba"):
        monkeypatch.setenv("POLYDET_NMS", name)
        det = Detector.from_artifact(BUNDLED)
        assert det.nms_backend == name
        results[name] = (dicts(det.detect(images)), dicts(det.detect(images, low)))
        pred = det.backend(det.preprocessor(images).batch)
        rows[name] = [nms_module.polygon_nms(pred, **kw) for kw in (
            {}, {"conf": 0.001, "max_det": 300}, {"conf": 0.001, "agnostic": True},
            {"conf": 0.001, "multi_label": True, "iou": 0.3})]
    assert results["numba"] == results["torch"]
    assert sum(len(r["detections"]) for r in results["torch"][0]) > 0
    assert sum(len(r["detections"]) for r in results["torch"][1]) > 30
    for got, want in zip(rows["numba"], rows["torch"]):
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_warmup_runs_the_pipeline_on_blank_images_at_the_given_batch_sizes():
    backend = FixedBackend(ROWS)
    det = Detector(backend)
    assert backend.seen == []  # building a Detector loads NMS only
    assert det.warmup((1, 1, 4)) == det.nms_backend
    assert backend.seen == [(1, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="positive integers"):
            det.warmup((bad,))


def test_polygons_map_onto_a_reduced_decode():
    """BatchResult.pixels of a large JPEG is a reduced decode (1/2, 1/4, 1/8): polygons_for maps the
    original-pixel polygons onto it, as dewarp and --draw use them."""
    d = Detections(800, 600, np.array([[[0, 0], [800, 0], [800, 600], [0, 600]]], np.float64),
                   np.array([0.9], np.float32), np.array([0]), ("page",))
    np.testing.assert_array_equal(d.polygons_for((600, 800, 3)), d.polygons)
    np.testing.assert_array_equal(d.polygons_for((150, 200, 3)), d.polygons / 4)
