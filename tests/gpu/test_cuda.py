"""Device tests: run on a CUDA machine (`scripts/gpu_tests.sh`); skipped elsewhere, with the reason.

An artifact exported on the CPU must run on CUDA and the other way round: a trace bakes the device of
tensors that forward creates (the detection grid), so both directions are checked against eager.
"""

import numpy as np
import pytest
import torch

from polydet.backends import load_backend
from polydet.export import TOLERANCES, export, load_or_build
from polydet.meta import Precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_tests.sh)")


def _ref(device, size=224):
    model, _ = load_or_build("random", seed=0)
    x = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return x, model.to(device).eval()(x.to(device)).float().cpu()


def _close(out, ref, kind):
    tol = TOLERANCES[kind]
    assert float((out[..., :8] - ref[..., :8]).abs().max()) <= tol["corners_px"]
    assert float((out[..., 8:] - ref[..., 8:]).abs().max()) <= tol["scores"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_cpu_export_runs_on_cuda(tmp_path, fmt):
    path, _ = export("random", fmt, out=tmp_path / f"cpu.{fmt}", device="cpu")
    x, ref = _ref("cpu")
    if fmt == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime here has no CUDAExecutionProvider (CPU build)")
    out = load_backend(path, device="cuda")(x).cpu()
    _close(out, ref, "fp32")


def test_cuda_export_runs_on_cpu(tmp_path):
    path, _ = export("random", "torchscript", out=tmp_path / "cuda.torchscript", device="cuda")
    x, ref = _ref("cpu")
    _close(load_backend(path, device="cpu")(x), ref, "fp32")
    _close(load_backend(path, device="cuda")(x).cpu(), ref, "fp32")


def test_fp16_on_cuda(tmp_path):
    cpu_path, _ = export("random", "torchscript", out=tmp_path / "cpu.torchscript", device="cpu")
    x, ref = _ref("cuda")
    b = load_backend(cpu_path, device="cuda", precision=Precision.FP16)
    assert b.half and b.input_dtype == torch.float16
    _close(b(x).cpu(), ref, "fp16")
    half_path, diff = export("random", "torchscript", out=tmp_path / "half.torchscript", device="cuda",
                             precision=Precision.FP16)
    assert diff["corners_px"] <= TOLERANCES["fp16"]["corners_px"]
    hb = load_backend(half_path, device="cuda")
    assert hb.info.precision is Precision.FP16 and hb.half
    _close(hb(x).cpu(), ref, "fp16")


def test_ops_same_on_cpu_and_cuda():
    from polydet.ops import polygon_iou, polygon_nms

    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, 4, 2, generator=g) * 100
    b = torch.rand(150, 4, 2, generator=g) * 100
    torch.testing.assert_close(polygon_iou(a.cuda(), b.cuda()).cpu(), polygon_iou(a, b), atol=1e-5, rtol=0)
    centers = torch.rand(1, 3000, 1, 2, generator=g) * 200
    quads = centers + torch.tensor([[-20.0, -15], [20, -15], [20, 15], [-20, 15]]) * (0.5 + torch.rand(1, 3000, 1, 1, generator=g))
    pred = torch.cat([quads.view(1, 3000, 8), torch.rand(1, 3000, 3, generator=g)], -1)
    cpu = polygon_nms(pred, conf=0.3, iou=0.45)[0]
    gpu = polygon_nms(pred.cuda(), conf=0.3, iou=0.45)[0].cpu()
    assert cpu.shape == gpu.shape and cpu.shape[0] > 0
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)


def test_detector_cuda_matches_cpu(tmp_path):
    from polydet.pipeline import DetectOptions, Detector

    path, _ = export("random", "torchscript", out=tmp_path / "m.torchscript", device="cpu")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), rng.integers(0, 255, (900, 300, 3), dtype=np.uint8)]
    opts = DetectOptions(conf=0.01, max_det=30)
    cpu = [r.to_dict() for r in Detector.from_artifact(path, device="cpu", options=opts).detect(imgs)]
    gpu = [r.to_dict() for r in Detector.from_artifact(path, device="cuda", options=opts).detect(imgs)]
    for a, b in zip(cpu, gpu):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        np.testing.assert_allclose([d["polygon"] for d in a["detections"]], [d["polygon"] for d in b["detections"]], atol=0.05)


@pytest.mark.parametrize("half", [False, True])
def test_cuda_channels_last_default_matches_contiguous(tmp_path, half):
    path, _ = export("random", "torchscript", out=tmp_path / "cl.torchscript", device="cpu")
    x, ref = _ref("cuda")
    precision = Precision.FP16 if half else None
    auto = load_backend(path, device="cuda", precision=precision)
    plain = load_backend(path, device="cuda", precision=precision, channels_last=False)
    assert auto.channels_last and not plain.channels_last
    out_auto, out_plain = auto(x).cpu(), plain(x).cpu()
    kind = "fp16" if half else "fp32"
    _close(out_auto, ref, kind)
    _close(out_plain, ref, kind)
    _close(out_auto, out_plain, kind)


def test_trained_weights_export_on_cuda_passes_parity(tmp_path):
    """With the trained weights a TorchScript artifact on CUDA convolves in TF32 (baked in by the trace):
    ~0.1 px from full fp32, inside the "tf32" tolerance and far outside fp32's, which proves the point."""
    from pathlib import Path

    weights = Path(__file__).resolve().parents[2] / "weights" / "polydet_main_area.pt"
    torch.backends.cudnn.benchmark = True  # as the throughput benchmark runs it
    _, diff = export(str(weights), "torchscript", out=tmp_path / "t.torchscript", device="cuda")
    assert TOLERANCES["fp32"]["corners_px"] < diff["corners_px"] <= TOLERANCES["tf32"]["corners_px"]
    assert diff["scores"] <= TOLERANCES["tf32"]["scores"]
    assert torch.backends.cudnn.allow_tf32  # restored after the check


def test_sliver_iou_same_on_cpu_and_cuda():
    """The nearly-collinear-edge case fixed in pair_iou (tests/unit/test_polygon.py, exact IoU 0.7989877281)
    and float32 needles 1/1024 .. 1/8 px wide: CUDA gives the CPU's values (the same torch code)."""
    from polydet.ops import polygon_iou

    sliver = torch.tensor([(0.0, 0.0), (0.0009765625, -47.5947265625), (0.0, 0.0), (0.0, 0.0009765625)],
                          dtype=torch.float64)
    b = (sliver[1] + 0.8940653925659252 * (sliver - sliver[1])).float().double()
    for x, y in ((sliver, b), (b, sliver)):
        assert abs(float(polygon_iou(x[None].cuda(), y[None].cuda())) - 0.7989877281) <= 1e-5
    g = torch.Generator().manual_seed(3)
    n = 400
    width = 2.0 ** -torch.randint(3, 11, (n, 1), generator=g).double()
    length = 5 + 55 * torch.rand(n, 1, generator=g, dtype=torch.float64)
    ang = 2 * torch.pi * torch.rand(n, 1, generator=g, dtype=torch.float64)
    u = torch.cat((ang.cos(), ang.sin()), 1)[:, None]  # along
    v = torch.cat((-ang.sin(), ang.cos()), 1)[:, None]  # across
    s = torch.tensor([[0.0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float64)
    a = (100 * torch.rand(n, 1, 2, generator=g, dtype=torch.float64) + s[..., :1] * length[:, None] * u
         + s[..., 1:] * width[:, None] * v).float()
    scale = 0.5 + 0.5 * torch.rand(n, 1, 1, generator=g, dtype=torch.float64)
    bb = (a[:, :1].double() + scale * (a.double() - a[:, :1].double())).float()
    cpu, gpu = polygon_iou(a, bb).diagonal(), polygon_iou(a.cuda(), bb.cuda()).diagonal().cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-6, rtol=0)
    # b is a inside-copy scaled about a's corner: IoU = scale^2 up to the float32 rounding of thin needles
    assert float((cpu.double() - scale.view(-1) ** 2).abs().max()) < 0.01


def test_detector_on_cuda_runs_nms_where_polydet_nms_says(monkeypatch, tmp_path):
    """CUDA predictions: copied to the CPU for the numba kernel where numba loads (the default), on the GPU
    with POLYDET_NMS=torch; the same detections either way."""
    from polydet.ops import nms
    from polydet.pipeline import DetectOptions, Detector

    path, _ = export("random", "torchscript", out=tmp_path / "m.torchscript")
    images = [np.random.default_rng(i).integers(0, 255, (300 + 40 * i, 400, 3), dtype=np.uint8) for i in range(3)]
    low = DetectOptions(conf=0.001, max_det=50)
    seen = []
    real = nms.polygon_nms

    def spy(pred, *a, **kw):
        seen.append(pred.device.type)
        return real(pred, *a, **kw)

    monkeypatch.setattr("polydet.pipeline.polygon_nms", spy)
    results = {}
    for name in ("auto", "torch"):
        monkeypatch.setenv("POLYDET_NMS", name)
        det = Detector.from_artifact(path, device="cuda")
        seen.clear()
        results[name] = [r.to_dict() for r in det.detect(images, low)]
        want = "cpu" if det.nms_backend == "numba" else "cuda"
        assert seen and set(seen) == {want}, (name, det.nms_backend, seen)
        print(f"POLYDET_NMS={name}: NMS {det.nms_backend} on {want}")
    assert sum(len(r["detections"]) for r in results["torch"]) > 0
    for a, b in zip(results["auto"], results["torch"]):
        assert [d["class_id"] for d in a["detections"]] == [d["class_id"] for d in b["detections"]]
        for da, db in zip(a["detections"], b["detections"]):
            assert abs(da["score"] - db["score"]) < 1e-4
            assert np.abs(np.array(da["polygon"]) - np.array(db["polygon"])).max() < 1e-2
