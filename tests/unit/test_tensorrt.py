"""TensorRT without TensorRT: what the backend and the exporter do before the runtime is called. The
runtime path itself (deserialize, execute_async_v3, the builder) is untested: no host here has TensorRT;
it is type-checked against tensorrt-stubs in test_tensorrt_types.py."""

from __future__ import annotations

import importlib.util
import json
import pickle

import pytest
import torch

from polydet.backends import backend_class, load_backend
from polydet.backends import tensorrt as trt_backend
from polydet.backends.tensorrt import (
    TensorRTBackend,
    batch_range,
    fits,
    meta_paths,
    plan_chunks,
    read_info,
    sniff,
    write_info,
)
from polydet.errors import (
    ConfigError,
    ExportError,
    MissingDependencyError,
    ModelLoadError,
)
from polydet.export import FORMATS
from polydet.export.tensorrt import bad_qdq, profile_shapes
from polydet.meta import ModelInfo, Precision


def _real_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Runtime")  # tensorrt-stubs alone: an empty namespace package


HAS_REAL_TRT = _real_tensorrt()
no_trt = pytest.mark.skipif(HAS_REAL_TRT, reason="TensorRT is installed: the missing-runtime errors cannot happen")

PLAN = b"ftrt" + bytes(60)  # a serialized plan's first bytes; the rest is never read without TensorRT


# --- sniffing ----------------------------------------------------------------------------------------

def test_sniff_engine_torch2trt_and_garbage(tmp_path):
    eng = tmp_path / "m.engine"
    eng.write_bytes(PLAN)
    assert sniff(eng) == ("engine", 0)
    header = json.dumps({"imgsz": [640, 640]}).encode()  # Ultralytics' length-prefixed metadata
    pre = tmp_path / "u.engine"
    pre.write_bytes(len(header).to_bytes(4, "little") + header + PLAN)
    assert sniff(pre) == ("engine", 4 + len(header))
    zipped = tmp_path / "t.engine"
    torch.save({"engine": bytearray(b"x"), "input_names": ["images"]}, zipped)
    assert sniff(zipped) == ("torch2trt", 0)
    legacy = tmp_path / "l.trt"
    torch.save({"engine": bytearray(b"x")}, legacy, _use_new_zipfile_serialization=False)
    assert sniff(legacy) == ("torch2trt", 0)
    raw_pickle = tmp_path / "p.trt"
    raw_pickle.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    assert sniff(raw_pickle) == ("torch2trt", 0)


@pytest.mark.parametrize("data", [b"", b"ft", b"onnx garbage here", b"\x08\x07\x12\x04onnx", b"{\"names\": []}",
                                  (100).to_bytes(4, "little") + b"x" * 100 + b"nope"])
def test_sniff_refuses_garbage(tmp_path, data):
    p = tmp_path / "g.engine"
    p.write_bytes(data)
    with pytest.raises(ModelLoadError, match="neither a serialized TensorRT engine .* nor a torch2trt state dict"):
        sniff(p)


def test_registry_sends_engines_and_plans_here(tmp_path):
    for suffix in (".engine", ".plan", ".trt"):
        assert backend_class(tmp_path / f"m{suffix}") is TensorRTBackend
    row = FORMATS["tensorrt"]
    assert row.suffix == ".engine" and row.backend == "tensorrt"
    assert row.precisions == (Precision.FP32, Precision.FP16, Precision.INT8)
    assert row.exporter == ".tensorrt:export_tensorrt" and row.cuda_tf32  # TensorRT builds fp32 with TF32 on


def test_the_archive_packs_the_metadata_with_the_engine(tmp_path):
    from polydet.serving.archive import companions

    eng = tmp_path / "m.engine"
    eng.write_bytes(PLAN)
    with pytest.raises(ConfigError, match="m.engine needs m.json beside it"):
        companions(eng)
    write_info(eng, ModelInfo())
    assert companions(eng) == [tmp_path / "m.json"]


# --- metadata beside the engine ----------------------------------------------------------------------

def test_metadata_round_trip(tmp_path):
    eng = tmp_path / "m.engine"
    info = ModelInfo(names=["page", "photo", "card"], imgsz=320, precision=Precision.FP16, passes=("slim",))
    written = write_info(eng, info)
    assert written == tmp_path / "m.json" == meta_paths(eng)[0]
    assert read_info(eng) == info
    written.rename(tmp_path / "m.engine.json")  # the other name is read too
    assert read_info(eng) == info
    assert read_info(tmp_path / "other.engine") is None


@pytest.mark.parametrize("text, match", [("{not json", "not valid JSON"), ('{"colour": 1}', "unknown keys"),
                                         ('{"precision": "fp8"}', "fp8")])
def test_metadata_errors_name_the_file(tmp_path, text, match):
    eng = tmp_path / "m.engine"
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(ModelLoadError, match=match) as e:
        read_info(eng)
    assert "m.json" in str(e.value)


# --- shape profiles and chunking ---------------------------------------------------------------------

def test_batch_range_fixed_and_from_the_profile():
    assert batch_range((8, 3, 224, 224), None) == (8, 8)
    assert batch_range((-1, 3, 224, 224), ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))) == (1, 16)
    assert batch_range((-1, 3, -1, -1), ((2, 3, 32, 32), (4, 3, 224, 224), (8, 3, 448, 448))) == (2, 8)
    with pytest.raises(ModelLoadError, match="no optimisation profile"):
        batch_range((-1, 3, 224, 224), None)
    with pytest.raises(ModelLoadError, match="batch range 0..4"):
        batch_range((-1, 3, 224, 224), ((0, 3, 224, 224), (1, 3, 224, 224), (4, 3, 224, 224)))
    with pytest.raises(ModelLoadError, match="scalar"):
        batch_range((), None)


def test_plan_chunks():
    assert plan_chunks(0, 1, 16) == []
    assert plan_chunks(5, 1, 16) == [(0, 5, 0)]  # a dynamic engine: no padding
    assert plan_chunks(37, 1, 16) == [(0, 16, 0), (16, 32, 0), (32, 37, 0)]
    assert plan_chunks(10, 8, 8) == [(0, 8, 0), (8, 10, 6)]  # fixed batch 8: the last chunk padded to 8
    assert plan_chunks(18, 4, 16) == [(0, 16, 0), (16, 18, 2)]  # padded only up to the profile's min
    assert plan_chunks(1, 1, 1) == [(0, 1, 0)]


def test_call_chunks_to_the_profile_without_the_runtime():
    """__call__'s chunking, with forward replaced by a stand-in that records the batches it gets."""
    b = TensorRTBackend.__new__(TensorRTBackend)
    b.batch_range, seen = (2, 4), []

    def forward(x):
        seen.append(len(x))
        return x.flatten(1)[:, :10].unsqueeze(1)

    b.forward = forward
    x = torch.arange(7 * 3 * 4 * 4, dtype=torch.float32).reshape(7, 3, 4, 4)
    out = b(x)
    assert seen == [4, 3] and out.shape == (7, 1, 10)
    assert torch.equal(out, x.flatten(1)[:, :10].unsqueeze(1))
    seen.clear()
    assert b(x[:1]).shape == (1, 1, 10) and seen == [2]  # below the min: padded, the padding's rows dropped


def test_fits_and_profile_shapes():
    info = ModelInfo(imgsz=224)
    lo, opt, hi = profile_shapes((-1, 3, 224, 224), info)
    assert (lo, opt, hi) == ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))
    assert profile_shapes((-1, 3, -1, -1), info, (2, 8, 32)) == ((2, 3, 32, 32), (8, 3, 224, 224),
                                                                 (32, 3, 448, 448))
    assert profile_shapes((8, 3, 224, 224), info) == ((8, 3, 224, 224),) * 3
    assert fits((16, 3, 224, 224), (lo, opt, hi)) and not fits((17, 3, 224, 224), (lo, opt, hi))
    assert not fits((1, 3, 256, 224), (lo, opt, hi)) and not fits((1, 3, 224), (lo, opt, hi))
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        profile_shapes((-1, 3, 224, 224), info, (4, 2, 8))
    with pytest.raises(ExportError, match=r"\(B, 3, H, W\)"):
        profile_shapes((-1, 224, 224), info)


# --- clear errors without TensorRT or CUDA -----------------------------------------------------------

def test_cpu_device_refused_before_anything_else(tmp_path):
    eng = tmp_path / "m.engine"
    eng.write_bytes(PLAN)
    with pytest.raises(ModelLoadError, match="CUDA devices only, not cpu: pass --device cuda"):
        load_backend(eng, device="cpu")


@no_trt
def test_missing_tensorrt_named(tmp_path):
    eng = tmp_path / "m.engine"
    eng.write_bytes(PLAN)
    with pytest.raises(MissingDependencyError, match="not installable from PyPI") as e:
        TensorRTBackend(eng, device="cuda")
    assert "tensorrt" in str(e.value)


@no_trt
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="tensorrt-stubs not installed")
def test_stubs_alone_are_not_tensorrt():
    """tensorrt-stubs makes `import tensorrt` succeed (a namespace package): it must not pass for TensorRT."""
    with pytest.raises(MissingDependencyError, match="only type stubs are installed"):
        trt_backend.check_tensorrt()


def test_garbage_engine_refused_before_the_runtime(tmp_path):
    p = tmp_path / "m.plan"
    p.write_bytes(b"not an engine")
    with pytest.raises(ModelLoadError, match="neither a serialized TensorRT engine"):
        TensorRTBackend(p, device="cuda")


@no_trt
def test_export_refuses_without_tensorrt(tmp_path):
    from polydet.export import export

    out = tmp_path / "m.engine"
    with pytest.raises(MissingDependencyError, match="tensorrt") as e:
        export("random", "tensorrt", out=out, imgsz=64, device="cpu")
    assert "not installable from PyPI" in str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_export_refuses_cpu_when_tensorrt_is_there(tmp_path, monkeypatch):
    from polydet.export import export

    monkeypatch.setattr("polydet.export.tensorrt.check_tensorrt", lambda: None)
    with pytest.raises(ConfigError, match="built on the GPU it will run on: pass --device cuda"):
        export("random", "tensorrt", out=tmp_path / "m.engine", imgsz=64, device="cpu")


# --- INT8 for TensorRT: symmetric Q/DQ ---------------------------------------------------------------

def test_symmetric_qdq_is_tensorrt_ready_and_the_cpu_recipe_is_not(tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    pytest.importorskip("onnxslim")
    import onnx

    from polydet.export import export
    from polydet.export.common import (
        ExportJob,
        example_input,
        fused_copy,
        load_or_build,
    )
    from polydet.export.int8 import QuantConfig
    from polydet.export.onnx import export_onnx
    from polydet.export.tensorrt import quantize_symmetric

    model, info = load_or_build("random", imgsz=64)
    fp32 = tmp_path / "m.onnx"
    export_onnx(ExportJob(fused_copy(model, Precision.FP32, "cpu"), example_input(64, Precision.FP32, "cpu"),
                          fp32, info))
    sym = tmp_path / "m.sym.onnx"
    quantize_symmetric(fp32, sym, info, QuantConfig(n_calib=2, exclude="none"))
    graph = onnx.load(str(sym))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 10
    assert bad_qdq(graph) == []
    assert load_backend(sym).info == info  # ModelInfo embedded: ONNX Runtime runs it as the engine's reference
    cpu_int8, _ = export("random", "onnx", out=tmp_path / "cpu.onnx", imgsz=64, precision="int8",
                         quant={"n_calib": 2}, verify=False)
    assert bad_qdq(onnx.load(str(cpu_int8)))  # u8 activations with zero points: TensorRT refuses them
    with pytest.raises(ConfigError, match="symmetric INT8"):
        quantize_symmetric(fp32, sym, info, QuantConfig(n_calib=2, scales=str(tmp_path / "s.json")))
