"""TensorRT exporter: the ONNX export, built into a serialized engine on a host that has TensorRT, with
its ModelInfo in a JSON beside it (``model.json`` for ``model.engine``: what backends/tensorrt.py reads).

Written for strongly typed networks, the only kind TensorRT 11 builds (10.x has both): every tensor keeps
the ONNX graph's type, so precision is chosen in the ONNX, never with the builder's FP16/INT8 flags or a
calibrator (deprecated in 10.1, removed in 11):
- fp32: the fp32 ONNX; fp16: the fp16 ONNX (traced from the fp16 model on the GPU);
- int8: explicit quantization, a Q/DQ ONNX whose INT8 zero points are all 0 (TensorRT takes symmetric
  signed INT8 only). polydet's CPU recipe (export/int8.py: u8 activations with zero points, for ONNX
  Runtime) is not one; ``quantize_symmetric`` calibrates the same images with s8 symmetric ranges.
UNTESTED against a real TensorRT: no host here has one (tests/unit/test_tensorrt.py tests what needs none).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..backends.tensorrt import check_tensorrt, dims, write_info
from ..errors import ConfigError, ExportError, require
from ..meta import ModelInfo, Precision
from .common import ExportJob

# Optimisation profile 0's batch range (min, opt, max): the engine takes any batch in it. TorchServe's
# default batchSize is 4 (serving/archive.py: Batching); 16 leaves room for larger batches on a GPU.
PROFILE_BATCH = (1, 4, 16)
WORKSPACE_BYTES = 4 << 30  # the builder's scratch memory for tactics; more lets it try more kernels
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def profile_shapes(shape: tuple[int, ...], info: ModelInfo, batch: tuple[int, int, int] = PROFILE_BATCH
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes for an ONNX input ``shape`` (-1 or 0 for a dynamic axis): ``batch`` for
    the batch; a dynamic height/width (``--dynamic``) from one stride to twice imgsz (the export's check
    runs imgsz + 64), optimised for imgsz."""
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {batch}")
    if len(shape) != 4:
        raise ExportError(f"the ONNX input must be (B, 3, H, W), got {shape}")
    side = [(s, s, s) if s > 0 else (info.stride, info.imgsz, 2 * info.imgsz) for s in shape[2:]]
    channels = shape[1] if shape[1] > 0 else 3
    fixed_batch = shape[0] if shape[0] > 0 else None
    b = (fixed_batch,) * 3 if fixed_batch else (lo, opt, hi)
    lo_s, opt_s, hi_s = ((b[i], channels, side[0][i], side[1][i]) for i in range(3))
    return lo_s, opt_s, hi_s


def bad_qdq(model) -> list[str]:
    """Q/DQ nodes of an ONNX ModelProto that TensorRT refuses: a zero point that is not INT8 0 (a u8 or
    asymmetric recipe). Empty for a TensorRT-ready graph."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    bad = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS or len(node.input) < 3 or not node.input[2]:
            continue  # no zero point: 0 of INT8
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.INT8 or numpy_helper.to_array(zp).any():
            bad.append(node.name or node.output[0])
    return bad


def quantize_symmetric(fp32: Path, out: Path, info: ModelInfo, cfg) -> None:
    """fp32 ONNX -> a Q/DQ ONNX TensorRT takes: ONNX Runtime's static QDQ with s8 activations and weights,
    symmetric, full range; the calibration images, method and kept-in-float nodes of ``cfg`` (a QuantConfig)."""
    onnx = require("onnx", "onnx", extra="onnx")
    onnxslim = require("onnxslim", "onnxslim", extra="optimize")
    q = require("onnxruntime.quantization", "onnxruntime", extra="onnx")
    from .int8 import _reader, calibration_images, head_nodes

    if cfg.scales:
        raise ConfigError("custom scales (u8 zero points) are an ONNX Runtime recipe; TensorRT takes symmetric INT8")
    model = onnxslim.slim(onnx.load(str(fp32)))
    method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
              "percentile": q.CalibrationMethod.Percentile}[cfg.method]
    slim = out.with_name(out.stem + ".slim.tmp.onnx")
    onnx.save(model, str(slim))
    try:
        q.quantize_static(str(slim), str(out), _reader(calibration_images(cfg), info, model.graph.input[0].name),
                          quant_format=q.QuantFormat.QDQ, per_channel=cfg.per_channel, reduce_range=False,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8, calibrate_method=method,
                          nodes_to_exclude=head_nodes(model, cfg.exclude) + list(cfg.extra_exclude),
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                         "QuantizeBias": False})  # TensorRT takes float biases only
    except Exception as e:  # the quantizer's own errors, named as an export failure
        raise ExportError(f"ONNX Runtime quantization failed: {e}") from e
    finally:
        for p in out.parent.glob(out.stem + ".slim.tmp*"):
            p.unlink(missing_ok=True)
    from .onnx import embed_info

    qm = onnx.load(str(out))
    bad = bad_qdq(qm)
    if bad:
        raise ExportError(f"the quantized graph has zero points TensorRT refuses: {bad[:5]}")
    embed_info(qm, info)  # runnable by the ONNX Runtime backend too (`polydet debug`, `polydet eval`)
    onnx.save(qm, str(out))


def export_tensorrt(job: ExportJob) -> None:
    """The fused model -> ONNX (fp32, fp16, or symmetric Q/DQ for int8) -> an engine at ``job.out`` with
    ``job.info`` beside it. Needs TensorRT and the GPU the engine will run on. The ONNX the engine is built
    from stays beside it (``model.src.onnx``): what `polydet debug` and polygraphy compare the engine with."""
    check_tensorrt()
    if job.example.device.type != "cuda":
        raise ConfigError("a TensorRT engine is built on the GPU it will run on: pass --device cuda")
    onnx_path = job.out.with_name(job.out.stem + ".src.onnx")
    fp32 = job.out.with_name(job.out.stem + ".fp32.tmp.onnx")
    from .onnx import export_onnx

    try:
        if job.info.precision is Precision.INT8:
            from .int8 import QuantConfig

            export_onnx(dataclasses.replace(job, out=fp32, info=dataclasses.replace(job.info, precision=Precision.FP32)))
            quantize_symmetric(fp32, onnx_path, job.info, job.quant or QuantConfig())
        else:
            export_onnx(dataclasses.replace(job, out=onnx_path))
        build_engine(onnx_path, job.out, job.info)
    finally:
        fp32.unlink(missing_ok=True)


def build_engine(onnx_path: Path, out: Path, info: ModelInfo, batch: tuple[int, int, int] = PROFILE_BATCH,
                 workspace: int = WORKSPACE_BYTES) -> Path:
    """An ONNX file (polydet's, or a TensorRT-ready Q/DQ one) -> a serialized engine at ``out`` plus
    ``info`` in the JSON beside it (backends.tensorrt.write_info); returns the JSON's path."""
    check_tensorrt()
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 builds weakly typed networks unless asked; 11 builds strongly typed ones only (the flag
    # may be gone there: then 0 is the default, strongly typed).
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly is None else 1 << int(strongly))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT's ONNX parser refused {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise ExportError(f"{onnx_path}: expected one image input, found {network.num_inputs}")
    inp = network.get_input(0)
    lo, opt, hi = profile_shapes(dims(inp.shape), info, batch)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:  # the reason is in TensorRT's log above
        raise ExportError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} (see its log)")
    out.write_bytes(memoryview(plan))
    return write_info(out, info)
