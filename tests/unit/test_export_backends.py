import sys

import numpy as np
import onnx
import pytest
import torch
from artifact_helpers import tuple_torchscript

from polydet.backends import backend_class, load_backend, suffixes
from polydet.errors import ConfigError, ExportError, MissingDependencyError, ModelLoadError
from polydet.export import TOLERANCES, export, load_or_build, verify_artifact
from polydet.meta import ModelInfo, Precision
from polydet.model import load_model


def test_artifacts_describe_themselves(artifacts):
    for key in ("torchscript", "onnx"):
        b = load_backend(artifacts[key])
        assert b.info == ModelInfo(names=["page", "photo"], imgsz=224, stride=32, letterbox="square",
                                   dynamic=False, precision=Precision.FP32)
    dyn = load_backend(artifacts["onnx_dynamic"]).info
    assert dyn.dynamic and dyn.letterbox == "auto"


def test_backend_outputs_match_eager(artifacts):
    eager, _ = load_model(artifacts["ckpt"])
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = eager(x)
    for key in ("torchscript", "onnx", "ckpt"):
        out = load_backend(artifacts[key])(x)
        assert out.shape == (3, 3087, 11) and out.dtype == torch.float32
        assert (out[..., :8] - ref[..., :8]).abs().max() < TOLERANCES["fp32"]["corners_px"]
        assert (out[..., 8:] - ref[..., 8:]).abs().max() < TOLERANCES["fp32"]["scores"]


def test_dynamic_onnx_runs_other_shapes(artifacts):
    b = load_backend(artifacts["onnx_dynamic"])
    assert b(torch.rand(2, 3, 320, 160)).shape == (2, 3 * (40 * 20 + 20 * 10 + 10 * 5), 11)


def test_onnx_runtime_threads_follow_torch_unless_given(artifacts):
    """One setting sizes both runtimes: the handler's torch_threads (torch.set_num_threads) also caps ONNX
    Runtime's intra-op pool; ONNX Runtime's own default (one thread per core) oversubscribed a 2-worker box."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = load_backend(artifacts["onnx"])
        assert b.threads == 1 and b.session.get_session_options().intra_op_num_threads == 1
        b = load_backend(artifacts["onnx"], threads=2)
        assert b.threads == 2 and b.session.get_session_options().intra_op_num_threads == 2
    finally:
        torch.set_num_threads(before)


def test_onnx_graph_has_no_scatternd(artifacts):
    ops = {n.op_type for n in onnx.load(str(artifacts["onnx"])).graph.node}
    assert "ScatterND" not in ops and "Conv" in ops and "BatchNormalization" not in ops  # fused


def test_export_parity_check_fails_on_a_wrong_artifact(artifacts, tmp_path, monkeypatch):
    """The parity check is real: an artifact of other weights must be rejected."""
    other, _ = load_or_build("random", seed=123)
    with pytest.raises(ExportError, match="beyond tolerance"):
        verify_artifact(artifacts["torchscript"], other, (224, 224))


def test_tuple_output_models_are_accepted(tmp_path, artifacts):
    eager, info = load_model(artifacts["ckpt"])
    path = tuple_torchscript(eager.fuse(), info, tmp_path / "tuple.torchscript",
                             extra=lambda y: [y[:, :10]])  # like YOLOv5's (pred, train_out) exports
    out = load_backend(path)(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, 3087, 11)


def test_foreign_artifact_without_metadata_warns_and_guesses(tmp_path, artifacts):
    m = onnx.load(str(artifacts["onnx"]))
    del m.metadata_props[:]
    path = tmp_path / "foreign.onnx"
    onnx.save(m, str(path))
    with pytest.warns(UserWarning, match="no polydet metadata"):
        b = load_backend(path)
    assert b.info.names == ["class0", "class1"] and b.info.imgsz == 224


def test_registry_and_errors(tmp_path, artifacts):
    assert backend_class(artifacts["torchscript"]).name == "torchscript"
    assert backend_class(artifacts["ckpt"]).name == "eager"  # .pt sniffed: a torch.save checkpoint
    assert {".onnx", ".engine", ".torchscript"} <= set(suffixes())
    with pytest.raises(ModelLoadError, match="unknown artifact type '.xyz'"):
        backend_class(tmp_path / "m.xyz")
    with pytest.raises(ModelLoadError, match="not found"):
        load_backend(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="needs a CUDA device"):
        load_backend(artifacts["torchscript"], precision=Precision.FP16)


def test_missing_runtime_names_the_package(artifacts, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(MissingDependencyError, match="pip install 'polydet\\[onnx\\]' \\(or onnxruntime\\)"):
        load_backend(artifacts["onnx"])


def test_tensorrt_seam_fails_clearly_without_tensorrt(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ftrt" + bytes(60))  # a plan's first bytes: past the file sniffing, to the runtime check
    try:
        import tensorrt  # noqa: F401
        import torch2trt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="tensorrt"):
            load_backend(engine, device="cuda")
        pytest.skip("TensorRT/torch2trt not installed (not installable from PyPI): checked the clear error only")


def test_export_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="needs --device cuda"):
        export("random", "torchscript", out=tmp_path / "x.torchscript", precision=Precision.FP16)
    with pytest.raises(ConfigError, match="unknown export format"):
        export("random", "tflite", out=tmp_path / "x.tflite")
    with pytest.raises(ConfigError, match="multiple of 32"):
        export("random", "onnx", out=tmp_path / "x.onnx", imgsz=230)


def test_torchscript_dynamic_shapes_and_imgsz(tmp_path):
    out, diff = export("random:polygon_yolov5n_seed", "torchscript", out=tmp_path / "s.torchscript", imgsz=320,
                       dynamic=True)
    assert diff["corners_px"] < TOLERANCES["fp32"]["corners_px"]
    b = load_backend(out)
    assert b.info.imgsz == 320 and b(torch.rand(1, 3, 256, 128)).shape == (1, 3 * (32 * 16 + 16 * 8 + 8 * 4), 11)
    assert np.isfinite(b(torch.rand(1, 3, 320, 320)).numpy()).all()


def test_torchscript_channels_last_is_cuda_only_by_default_and_changes_nothing(artifacts):
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    plain = load_backend(artifacts["torchscript"])
    assert plain.channels_last is False  # auto: on for CUDA only (tests/gpu checks CUDA)
    forced = load_backend(artifacts["torchscript"], channels_last=True)
    assert forced.channels_last is True
    a, b = plain(x), forced(x)
    assert a.shape == b.shape and float((a - b).abs().max()) < 1e-3
