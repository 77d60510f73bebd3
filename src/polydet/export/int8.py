"""INT8 post-training quantization of an fp32 ONNX export: ONNX Runtime static QDQ.

The fp32 graph is slimmed first (ORT's quantizer needs resolved shapes), calibrated on images run through
the pipeline's own preprocessing, and quantized per channel (weights) and per tensor (activations).
Why the defaults (measured on a 2-core AVX2 CPU without VNNI, bundled weights, 200 synthetic validation
images, 64 calibration images; fp32 mAP50 0.9702 / mAP50-95 0.8156, benchmarks/quant_accuracy.py):
- ``exclude="head"``: the single output mixes corner pixels (0..imgsz) and probabilities (0..1); a per-
  tensor scale for it wipes out the scores (nothing excluded: mAP50 0.852). Keeping only the head's
  decode in float still cost 0.014 mAP50-95 (its 1x1 convs quantized); the whole head in float: 0.9715 /
  0.8144.
- ``reduce_range``: 7-bit weights unless the CPU has VNNI: without VNNI the U8S8 kernels (vpmaddubsw)
  saturate their 16-bit sums (0.9329 / 0.7462 with the whole head in float).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ExportError, require
from ..meta import ModelInfo

METHODS = ("minmax", "entropy", "percentile")
EXCLUDES = ("head", "decode", "none")
SYNTH = "synth"


@dataclass(frozen=True)
class QuantConfig:
    """How ``polydet export --precision int8`` / ``polydet quantize`` quantize. Defaults: see the module doc."""

    calib: str = SYNTH  # a folder of images (labels not needed), or "synth": synthetic scenes made on the fly
    n_calib: int = 64  # images used for calibration (the first n of the folder, sorted by name)
    calib_seed: int = 4242  # synthetic calibration seed: never a validation (999) or training (>=1000) seed
    method: str = "minmax"  # activation range: minmax (seen extremes), entropy (KL), percentile (99.999%)
    per_channel: bool = True  # one weight scale per output channel (per tensor loses the small channels)
    reduce_range: bool | None = None  # 7-bit weights; None: chosen from the CPU (True without VNNI)
    exclude: str = "head"  # nodes kept in float: the detection head, its decode only, or none
    scales: str | None = None  # JSON {tensor: {"min": a, "max": b} | {"scale": s, "zero_point": z}}
    extra_exclude: tuple[str, ...] = field(default_factory=tuple)  # more node names kept in float

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown calibration method {self.method!r}: {', '.join(METHODS)}")
        if self.exclude not in EXCLUDES:
            raise ConfigError(f"unknown exclusion {self.exclude!r}: {', '.join(EXCLUDES)}")
        if self.n_calib < 1:
            raise ConfigError("the calibration set needs at least one image")
        object.__setattr__(self, "extra_exclude", tuple(self.extra_exclude))

    def recipe(self, reduce_range: bool) -> dict:
        """What the artifact records about its quantization (written beside it as JSON)."""
        return {"calib": self.calib, "n_calib": self.n_calib, "method": self.method, "per_channel": self.per_channel,
                "reduce_range": reduce_range, "exclude": self.exclude, "extra_exclude": list(self.extra_exclude),
                "scales": self.scales}


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI), the u8*s8 dot product without saturation.
    Non-x86 CPUs (ARM's sdot/udot have no such saturation): True."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def calibration_images(cfg: QuantConfig) -> list:
    """``n_calib`` inputs as the pipeline takes them: encoded files' bytes, or synthetic BGR arrays."""
    if cfg.calib == SYNTH:
        from ..data.synth import render_sample

        return [render_sample(np.random.default_rng([cfg.calib_seed, i]))[0] for i in range(cfg.n_calib)]
    from ..evaluate import IMAGE_SUFFIXES

    folder = Path(cfg.calib)
    if not folder.is_dir():
        raise ConfigError(f"calibration folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:cfg.n_calib]
    if not files:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the calibration folder {folder}")
    return [p.read_bytes() for p in files]


def _reader(images: list, info: ModelInfo, input_name: str):
    """An ORT CalibrationDataReader over ``images``, letterboxed like the pipeline, with a progress bar."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader
    from tqdm import tqdm

    from ..preprocess import CpuPreprocessor

    pre = CpuPreprocessor(info, torch.device("cpu"), torch.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def rewind(self):
            self.it = iter(tqdm(images, desc="calibrating", unit="img", leave=False))

        def get_next(self):
            img = next(self.it, None)
            if img is None:
                return None
            prepared = pre([img])
            if prepared.batch is None:
                raise ConfigError(f"calibration image cannot be read: {prepared.items[0].reason}")
            return {input_name: prepared.batch.numpy()}

    return Reader()


def head_nodes(model, exclude: str) -> list[str]:
    """Names of the nodes kept in float: the head (``/det/...``), its decode (all but its convs) or none."""
    det = [n.name for n in model.graph.node if n.name.startswith("/det/")]
    if exclude == "head":
        return det
    if exclude == "decode":
        return [n.name for n in model.graph.node if n.name in det and n.op_type != "Conv"]
    return []


def load_scales(path: str | None) -> dict:
    """A custom-scales file -> ORT's TensorQuantOverrides: {tensor: [{"rmin", "rmax"} | {"scale", "zero_point"}]}."""
    if not path:
        return {}
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the custom scales file {path}: {e}") from e
    out = {}
    for name, v in spec.items():
        if set(v) == {"min", "max"} and v["min"] < v["max"]:
            out[name] = [{"rmin": np.float32(v["min"]), "rmax": np.float32(v["max"])}]
        elif set(v) == {"scale", "zero_point"} and v["scale"] > 0:
            out[name] = [{"scale": np.float32(v["scale"]), "zero_point": np.uint8(v["zero_point"])}]
        else:
            raise ConfigError(f"{path}: {name!r} needs {{'min' < 'max'}} or {{'scale' > 0, 'zero_point'}}, got {v}")
    return out


def quantize_onnx(fp32: Path, out: Path, info: ModelInfo, cfg: QuantConfig) -> dict:
    """fp32 ONNX -> INT8 QDQ ONNX at ``out`` with ``info`` as metadata; returns the recipe it used."""
    onnx = require("onnx", "onnx", extra="onnx")
    onnxslim = require("onnxslim", "onnxslim", extra="optimize")
    q = require("onnxruntime.quantization", "onnxruntime", extra="onnx")
    from .onnx import embed_info

    model = onnxslim.slim(onnx.load(str(fp32)))
    scales = load_scales(cfg.scales)
    known = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer}
    if set(scales) - known:
        raise ConfigError(f"custom scales name tensors not in the graph: {sorted(set(scales) - known)}")
    reduce_range = (not cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range
    method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
              "percentile": q.CalibrationMethod.Percentile}[cfg.method]
    reader = _reader(calibration_images(cfg), info, model.graph.input[0].name)
    slim_path = out.with_name(out.stem + ".slim.tmp.onnx")
    onnx.save(model, str(slim_path))
    try:
        q.quantize_static(str(slim_path), str(out), reader, quant_format=q.QuantFormat.QDQ,
                          per_channel=cfg.per_channel, reduce_range=reduce_range,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=method, nodes_to_exclude=head_nodes(model, cfg.exclude) + list(cfg.extra_exclude),
                          extra_options={"TensorQuantOverrides": scales} if scales else None)
    except ConfigError:
        raise
    except Exception as e:  # the quantizer's own errors, named as an export failure
        raise ExportError(f"ONNX Runtime quantization failed: {e}") from e
    finally:
        slim_path.unlink(missing_ok=True)
        for p in out.parent.glob(out.stem + ".slim.tmp*"):
            p.unlink(missing_ok=True)
    qm = onnx.load(str(out))
    embed_info(qm, info)
    recipe = cfg.recipe(reduce_range)
    qm.metadata_props.add(key="polydet.int8", value=json.dumps(recipe, sort_keys=True))
    onnx.save(qm, str(out))
    return recipe
