"""``export()``: weights -> a verified artifact of any format in ``FORMATS``.

The driver knows no format: it checks the request against the format's row, hands the fused model to
the row's exporter, runs the requested graph passes in order, then checks the artifact's metadata and
its outputs against the eager model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import ConfigError
from ..meta import LAYOUT, LAYOUT_LOGITS, LOGITS_PASS, ModelInfo, Precision
from .common import ExportJob, example_input, fused_copy, load_or_build
from .formats import CONTRACT_PASSES, FORMATS, PASSES, ExportFormat, resolve
from .verify import verify_artifact, verify_metadata


def export(weights: str, fmt: str, out: str | Path | None = None, imgsz: int | None = None,
           precision: Precision | str | None = None, dynamic: bool = False, opset: int = 17,
           device: str = "cpu", cfg: str | None = None, names=None, verify: bool = True, seed: int = 0,
           passes=(), quant=None, target: str | None = None) -> tuple[Path, dict]:
    """Export and verify. Returns (artifact path, max abs differences vs eager; {} without ``verify``).

    ``precision``: None is the format's first (fp32, or fp16 where the runtime has no fp32: rknn).
    ``out`` defaults to ``<weights stem>_<imgsz>[_<precision>]<suffix>`` (no precision part for fp32);
    ``passes``: names in ``PASSES`` that the format runs, applied in this order and recorded in the
    artifact's ModelInfo. ``quant``: an ``export.int8.QuantConfig`` for ``precision="int8"`` (None: defaults).
    ``target``: the hardware the format compiles for, one of its row's ``targets`` (None: the first).
    """
    row, precision, passes = check_request(fmt, precision, passes, device)
    target = check_target(row, target)
    quant = _quant_config(quant, precision)
    model, info = load_or_build(weights, cfg=cfg, names=names, imgsz=imgsz, seed=seed)
    info = dataclasses.replace(info, imgsz=imgsz or info.imgsz, precision=precision, passes=passes,
                               dynamic=dynamic, letterbox="auto" if dynamic else "square")
    if LOGITS_PASS in passes:  # the graph's output changes contract: say so in its layout
        info = dataclasses.replace(info, layout=LAYOUT_LOGITS)
    if info.imgsz % info.stride:
        raise ConfigError(f"imgsz {info.imgsz} must be a multiple of {info.stride}")
    out = Path(out) if out is not None else default_out(weights, info, row)
    out.parent.mkdir(parents=True, exist_ok=True)
    eager = model.to(device).eval()
    job = ExportJob(fused_copy(eager, precision, device), example_input(info.imgsz, precision, device), out,
                    _before_contract_passes(info), opset, quant, target)
    resolve(row.exporter)(job)
    for name in passes:
        resolve(PASSES[name])(out, info)
    if not verify:
        return out, {}
    verify_metadata(out, info, device=device)
    diff: dict = {}
    sizes = [(info.imgsz, info.imgsz)] + ([(info.imgsz + 64, info.imgsz - 32)] if dynamic else [])
    for s in sizes:
        d = verify_artifact(out, eager, s, device=device)
        diff = {k: max(v, diff.get(k, 0.0)) for k, v in d.items()}
    return out, diff


def _before_contract_passes(info: ModelInfo) -> ModelInfo:
    """What the exporter's graph is before the passes that change the contract run (the int8 calibration
    feeds it float NCHW); those passes then write ``info`` itself."""
    if not any(p in CONTRACT_PASSES for p in info.passes):
        return info
    return dataclasses.replace(info, passes=tuple(p for p in info.passes if p not in CONTRACT_PASSES),
                               layout=LAYOUT)


def check_request(fmt: str, precision, passes, device) -> tuple[ExportFormat, Precision, tuple[str, ...]]:
    """Refuse what the format's row does not offer, naming what it does; returns (row, precision, passes)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}: {', '.join(FORMATS)}")
    row = FORMATS[fmt]
    precision = row.precisions[0] if precision is None else precision
    try:
        precision = Precision(precision)
    except ValueError as e:
        raise ConfigError(f"unknown precision {precision!r}: {', '.join(p.value for p in Precision)}") from e
    if precision not in row.precisions:
        raise ConfigError(f"{fmt} cannot be exported in {precision.value}: it supports "
                          f"{', '.join(p.value for p in row.precisions)}")
    if precision.input_half and row.fp16_input and torch.device(device).type != "cuda":
        raise ConfigError("--precision fp16 needs --device cuda (fp16 convolutions are a GPU feature)")
    if isinstance(passes, str):
        raise ConfigError(f"passes must be a sequence of pass names, got the string {passes!r}")
    passes = tuple(passes)
    for name in passes:
        if name not in PASSES:
            raise ConfigError(f"unknown graph pass {name!r}: known passes: {', '.join(PASSES) or 'none yet'}")
        if name not in row.passes:
            raise ConfigError(f"{fmt} cannot run graph pass {name!r}: its passes: {', '.join(row.passes) or 'none'}")
    return row, precision, passes


def check_target(row: ExportFormat, target: str | None) -> str | None:
    """The row's target for ``target`` (None: its first; None for a format that compiles for no target)."""
    if target is None:
        return row.targets[0] if row.targets else None
    if target not in row.targets:
        offered = f"its targets: {', '.join(row.targets)}" if row.targets else "it compiles for no hardware target"
        raise ConfigError(f"{row.name} cannot be exported for target {target!r}: {offered}")
    return target


def _quant_config(quant, precision: Precision):
    """``quant`` (a QuantConfig, a dict of its fields, or None) checked against the precision."""
    if quant is None:
        return None
    if precision is not Precision.INT8:
        raise ConfigError(f"quantization options (calibration) apply to int8 exports, not {precision.value}")
    from .int8 import QuantConfig

    return quant if isinstance(quant, QuantConfig) else QuantConfig(**quant)


def default_out(weights: str, info: ModelInfo, row: ExportFormat) -> Path:
    stem = "random" if weights.startswith("random") else Path(weights).stem
    prec = "" if info.precision is Precision.FP32 else f"_{info.precision.value}"
    return Path(f"{stem}_{info.imgsz}{prec}{row.suffix}")
