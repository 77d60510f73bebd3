"""Quantization-aware training (the seed handbook's QDQ step after PTQ): ``polydet qat``.

Fine-tunes a model's weights with fake quantization (torch.ao.quantization's FakeQuantize, part of the torch
the project pins) on synthetic training scenes, then exports a QDQ ONNX that ONNX Runtime runs in INT8.

Where the fake quantizers sit (what ONNX Runtime fuses into QLinearConv, checked by a test on the optimized
graph): every convolution of the body and neck takes a uint8 per-tensor input, int8 per-channel symmetric
weights (7-bit when ``reduce_range``: the u8 x s8 kernels of CPUs without VNNI saturate otherwise, as for
PTQ in export/int8.py) and gives a uint8 per-tensor output; SiLU, the joins and the detection head (whose
one output mixes pixels and probabilities) stay float, as PTQ's default ``exclude="head"`` keeps the head.
BatchNorm is folded before training (the fused model is what is exported), so the fine-tune moves the
folded weights and biases. The ranges: min/max seen on ``observe_batches`` batches before fake quantization
starts, then moving averages, frozen for the last part of the run so the final steps fit the final scales.

    polydet qat --weights best.pt --steps 300 --out best_224_qat.onnx [--data VAL_DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

# Max |ONNX Runtime INT8 - the fake-quant torch model| on export's two noise inputs and 6 synthetic scenes
# (calibration seed 4242), over all rows and over the rows the torch model is confident about (objectness
# >= 0.25, what NMS keeps). They are not bit-equal: ORT's QuantizeLinear divides by the scale where torch's
# fake quantization multiplies by its inverse, so a value on a rounding edge lands one step apart, and the
# step travels through ~57 quantized layers (ORT with every graph optimization off already differs by 4.4
# px / 0.046 on the noise); the fused QLinearConv kernels add their own rounding. Measured on the bundled
# weights after a short run: 11.5 px / 0.090 on all rows, 3.9 px / 0.052 on the 176 confident rows.
QAT_PARITY = {"corners_px": 24.0, "scores": 0.2, "confident_corners_px": 8.0, "confident_scores": 0.1}
# graph="ort" is PTQ of the fine-tuned float weights (ORT calibrates its own ranges and quantizes every op), so it
# is held as PTQ's export is held to its float model: TOLERANCES["int8"] on export's fixed noise inputs against the
# fine-tuned model with its fake quantizers off. (Measured after 33 CPU steps on the bundled weights, over
# parity_inputs' noise and scenes: 29.6 px / 0.42 all rows, 12.8 px / 0.35 confident rows; against the fake-quant
# model itself the confident rows moved 11.0 px / 0.32: ORT's ranges are not the trained ones.)
GRAPHS = ("qat", "ort")


@dataclass(frozen=True)
class QatConfig:
    steps: int = 300  # optimizer steps of fake-quant fine-tuning
    batch: int = 8  # images per step (synthetic scenes rendered on the fly)
    lr: float = 1e-4  # SGD; 1% of training's lr0: a fine-tune of trained weights, not a re-train
    momentum: float = 0.937  # training's SGD momentum
    observe_batches: int = 4  # batches that set the initial ranges before fake quantization starts
    freeze_at: float = 0.7  # after this fraction of the steps the ranges stop moving
    reduce_range: bool | None = None  # 7-bit weights; None: on unless the CPU has VNNI (as PTQ)
    workers: int = 1  # loader processes rendering scenes
    seed: int = 0  # data seed: training scenes 1000 + 1000*seed + epoch, never a validation seed
    time_budget_s: float | None = None  # stop training early (the export still runs) after this long
    device: str = "cpu"  # where the fine-tune runs (cuda: scripts/gpu_qat.sh); export and checks run on the CPU
    # "qat": the fake quantizers as trained become the Q/DQ pairs (conv inputs and outputs only: SiLU and joins
    # run in float between them, slower than PTQ's graph); "ort": the fine-tuned weights go through ONNX
    # Runtime's static quantizer with PTQ's defaults (export/int8.py: every op quantized, PTQ's graph and speed;
    # activation ranges calibrated there, not the trained ones)
    graph: str = "qat"

    def __post_init__(self):
        if self.steps < 0 or self.batch < 1 or self.observe_batches < 1 or not 0 <= self.freeze_at <= 1:
            raise ConfigError(f"QAT settings out of range: {self}")
        if self.graph not in GRAPHS:
            raise ConfigError(f"unknown QAT export graph {self.graph!r}: {', '.join(GRAPHS)}")


def act_fq() -> nn.Module:
    """uint8 per-tensor affine, as ONNX Runtime's static QDQ quantizes activations."""
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


def weight_fq(reduce_range: bool) -> nn.Module:
    """int8 per output channel, symmetric; [-64, 63] with ``reduce_range``. Ranges follow the current weights
    (averaging 1.0), as a quantizer reading the final weights would set them."""
    from torch.ao.quantization import (
        FakeQuantize,
        MovingAveragePerChannelMinMaxObserver,
    )

    lo, hi = (-64, 63) if reduce_range else (-128, 127)
    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=lo, quant_max=hi,
                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0, averaging_constant=1.0)


class QConv(nn.Module):
    """A fused polydet ``Conv`` (conv with bias, then SiLU) as ONNX Runtime runs it in INT8: fake-quantized
    input, weights and conv output (one QLinearConv), the activation in float."""

    def __init__(self, block: nn.Module, reduce_range: bool):
        super().__init__()
        if getattr(block, "bn", None) is not None:
            raise ConfigError("QAT works on a BN-fused model (export.common.fused_copy)")
        self.conv, self.act = block.conv, block.act
        self.fq_in, self.fq_w, self.fq_out = act_fq(), weight_fq(reduce_range), act_fq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        y = F.conv2d(self.fq_in(x), self.fq_w(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)
        return self.act(self.fq_out(y))


def prepare(model: nn.Module, reduce_range: bool) -> nn.Module:
    """Swap every ``Conv`` block of ``model.yolobody`` (not the head) for a :class:`QConv`, in place."""
    from ..model.modules import Conv

    swapped = 0
    for name, parent in list(model.yolobody.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv):
                setattr(parent, child_name, QConv(child, reduce_range))
                swapped += 1
    if not swapped:
        raise ConfigError("no Conv blocks to quantize in the model's body")
    return model


def set_phase(model: nn.Module, observe: bool, fake_quant: bool) -> None:
    from torch.ao.quantization import FakeQuantize

    for m in model.modules():
        if isinstance(m, FakeQuantize):
            m.enable_observer(observe)
            m.enable_fake_quant(fake_quant)


@torch.no_grad()
def bake_weights(model: nn.Module) -> None:
    """Weights replaced by their fake-quantized values and the weight quantizers widened to [-128, 127] with
    the same scales: the ONNX exporter writes only the full int8 range, and the integers stay the 7-bit
    ones of training (|w / scale| <= 64)."""
    for m in model.modules():
        if isinstance(m, QConv):
            fq = m.fq_w
            fq.enable_fake_quant(True)
            m.conv.weight.copy_(fq(m.conv.weight))
            fq.quant_min, fq.quant_max = -128, 127
            fq.activation_post_process.quant_min, fq.activation_post_process.quant_max = -128, 127


def _batches(cfg: QatConfig, imgsz: int, n: int):
    """``n`` training batches (uint8 images, targets) of synthetic scenes, from training's own loader."""
    from ..train.loader import make_loader
    from ..train.trainer import TrainConfig

    tcfg = TrainConfig(data="synth", imgsz=imgsz, batch=cfg.batch, workers=cfg.workers, epochs=1,
                       epoch_size=max(n, 1) * cfg.batch, seed=cfg.seed)
    loader, _ = make_loader(tcfg)
    return iter(loader)


def finetune(model: nn.Module, imgsz: int, cfg: QatConfig, log=print) -> dict:
    """Observe, then train with fake quantization on; returns what happened (steps run, losses, seconds)."""
    from ..train.loss import PolygonLoss

    dev = torch.device(cfg.device)
    model.to(dev)
    loss_fn = PolygonLoss(model, imgsz=imgsz)
    data = ((i.to(dev), t.to(dev)) for i, t in _batches(cfg, imgsz, cfg.observe_batches + cfg.steps))
    t0 = time.monotonic()
    model.eval()  # BN is folded; eval only changes the head's output, not needed while observing
    set_phase(model, observe=True, fake_quant=False)
    with torch.no_grad():
        for _ in range(cfg.observe_batches):
            imgs, _ = next(data)
            model(imgs.float() / 255)
    set_phase(model, observe=True, fake_quant=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    losses, done = [], 0
    for step in range(cfg.steps):
        if step == int(cfg.freeze_at * cfg.steps):
            set_phase(model, observe=False, fake_quant=True)
        if cfg.time_budget_s is not None and time.monotonic() - t0 > cfg.time_budget_s:
            break
        imgs, targets = next(data)
        loss, _ = loss_fn(model(imgs.float() / 255), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(loss.detach().item() / imgs.shape[0])
        done += 1
        if done % 25 == 0:
            log(f"qat step {done}/{cfg.steps}: loss {sum(losses[-25:]) / 25:.4f} ({time.monotonic() - t0:.0f} s)",
                flush=True)
    set_phase(model, observe=False, fake_quant=True)
    model.eval().cpu()
    return {"steps": done, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "seconds": round(time.monotonic() - t0, 1)}


def export_qdq(model: nn.Module, info, out: Path, recipe: dict) -> Path:
    """The fine-tuned fake-quant model -> a QDQ ONNX at ``out`` (ModelInfo with precision int8, the recipe
    under "polydet.int8"), traced like every ONNX export (export/onnx.py)."""
    import onnx

    from ..export.common import ExportJob
    from ..export.onnx import _trace
    from ..meta import Precision

    info = dataclasses.replace(info, precision=Precision.INT8, passes=())
    bake_weights(model)
    _trace(ExportJob(model, torch.zeros(1, 3, info.imgsz, info.imgsz), out, info))
    m = onnx.load(str(out))
    m.metadata_props.add(key="polydet.int8", value=json.dumps(recipe, sort_keys=True))
    onnx.save(m, str(out))
    return out


def export_ort(model: nn.Module, info, out: Path, recipe: dict, reduce_range: bool) -> Path:
    """The fine-tuned weights (on their trained grid) as a float graph, quantized by ONNX Runtime's static QDQ
    with PTQ's defaults: PTQ's graph and speed; the fake quantizers are on again afterwards."""
    import onnx

    from ..export.common import ExportJob
    from ..export.int8 import QuantConfig, quantize_onnx
    from ..export.onnx import _trace
    from ..meta import Precision

    bake_weights(model)
    set_phase(model, observe=False, fake_quant=False)
    fp32 = out.with_name(out.stem + ".qatfp32.tmp.onnx")
    try:
        _trace(ExportJob(model, torch.zeros(1, 3, info.imgsz, info.imgsz), fp32, info))
        ptq = quantize_onnx(fp32, out, dataclasses.replace(info, precision=Precision.INT8, passes=()),
                            QuantConfig(reduce_range=reduce_range))
    finally:
        fp32.unlink(missing_ok=True)
        set_phase(model, observe=False, fake_quant=True)
    m = onnx.load(str(out))
    (prop,) = [p for p in m.metadata_props if p.key == "polydet.int8"]
    prop.value = json.dumps({**recipe, "ptq": ptq}, sort_keys=True)
    onnx.save(m, str(out))
    return out


def parity_inputs(info) -> torch.Tensor:
    """Export's fixed noise inputs and 6 letterboxed synthetic scenes of the calibration seed: (8, 3, S, S)."""
    import numpy as np

    from ..data.synth import render_sample
    from ..export.common import fixed_inputs
    from ..export.int8 import QuantConfig
    from ..preprocess import CpuPreprocessor

    seed = QuantConfig().calib_seed
    scenes = [render_sample(np.random.default_rng([seed, i]))[0] for i in range(6)]
    pre = CpuPreprocessor(info, torch.device("cpu"), torch.float32)(scenes).batch
    return torch.cat((fixed_inputs((info.imgsz, info.imgsz)), pre))


def parity(path: Path, model: nn.Module, info, limits: dict = QAT_PARITY, x: torch.Tensor | None = None) -> dict:
    """ONNX Runtime vs ``model`` (the fake-quant torch model, or with its quantizers off) on ``x`` (default
    :func:`parity_inputs`); raises beyond ``limits``."""
    from ..backends import load_backend
    from ..errors import ExportError
    from .report import output_diffs

    x = parity_inputs(info) if x is None else x
    with torch.inference_mode():
        diff = output_diffs(model.eval()(x), load_backend(path)(x))
    if any(diff[k] > v for k, v in limits.items()):
        raise ExportError(f"{path}: ONNX Runtime differs from the torch model beyond {limits}: {diff}")
    return diff


def qat(weights: str, out: Path | None = None, cfg: QatConfig = QatConfig(), imgsz: int | None = None,
        model_cfg: str | None = None, log=print) -> tuple[Path, dict]:
    """Weights -> fine-tuned with fake quantization -> a QDQ ONNX; returns its path and what the run did
    (steps, losses, parity vs the fake-quant model, differences from the float model)."""
    from ..backends import load_backend
    from ..export.common import fixed_inputs, fused_copy, load_or_build
    from ..export.int8 import cpu_has_vnni
    from ..export.verify import TOLERANCES
    from ..meta import Precision
    from .report import output_diffs

    torch.manual_seed(cfg.seed)
    eager, info = load_or_build(weights, cfg=model_cfg, imgsz=imgsz)
    info = dataclasses.replace(info, imgsz=imgsz or info.imgsz)
    reduce_range = (not cpu_has_vnni()) if cfg.reduce_range is None else cfg.reduce_range
    model = prepare(fused_copy(eager.eval(), Precision.FP32, "cpu"), reduce_range)
    run = finetune(model, info.imgsz, cfg, log=log)
    stem = "random" if weights.startswith("random") else Path(weights).stem
    out = Path(out) if out is not None else Path(f"{stem}_{info.imgsz}_qat.onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {"method": "qat", "steps": run["steps"], "batch": cfg.batch, "lr": cfg.lr, "seed": cfg.seed,
              "reduce_range": reduce_range, "per_channel": True, "exclude": "head", "graph": cfg.graph}
    if cfg.graph == "ort":
        export_ort(model, info, out, recipe, reduce_range)
        set_phase(model, observe=False, fake_quant=False)
        run["parity_float_finetuned"] = parity(out, model, info, TOLERANCES["int8"],
                                               fixed_inputs((info.imgsz, info.imgsz)))
        set_phase(model, observe=False, fake_quant=True)
    else:
        export_qdq(model, info, out, recipe)
        run["parity_fakequant"] = parity(out, model, info)
    with torch.inference_mode():  # reported, not checked: QAT moves the weights away from the float model
        x = parity_inputs(info)
        run["vs_float_model"] = output_diffs(eager.eval()(x), load_backend(out)(x))
    return out, {**run, "recipe": recipe}


def make_parser() -> argparse.ArgumentParser:
    from .quantize import model_parser

    d = QatConfig()
    p = model_parser("polydet qat", __doc__.splitlines()[0], "QDQ ONNX (default <stem>_<imgsz>_qat.onnx)")
    for flag, field, kind, help_ in (("--steps", "steps", int, "fine-tuning steps"), ("--batch", "batch", int, "images per step"),
                                     ("--lr", "lr", float, "SGD learning rate"),
                                     ("--observe-batches", "observe_batches", int, "batches setting the first ranges"),
                                     ("--freeze-at", "freeze_at", float, "fraction of steps after which ranges freeze"),
                                     ("--workers", "workers", int, "loader processes"), ("--seed", "seed", int, "data seed"),
                                     ("--device", "device", str, "fine-tune on this device"),
                                     ("--time-budget", "time_budget_s", float, "stop training after this many seconds")):
        p.add_argument(flag, dest=field, type=kind, default=getattr(d, field), help=f"{help_} (default %(default)s)")
    p.add_argument("--graph", choices=GRAPHS, default=d.graph, help="qat: the trained Q/DQ pairs; ort: the trained "
                   "weights through ONNX Runtime's quantizer with PTQ's defaults (PTQ's graph) (default %(default)s)")
    p.add_argument("--data", help="labelled folder: report mAP and speed against the fp32 ONNX of the same weights")
    p.add_argument("--report", type=Path, help="write what the run did (and the report) as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    from ..errors import PolydetError
    from .quantize import REDUCE_RANGE

    args = make_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(QatConfig)} - {"reduce_range", "momentum"}
    try:
        cfg = QatConfig(**{k: getattr(args, k) for k in fields},
                        reduce_range=REDUCE_RANGE[args.reduce_range])
        out, run = qat(args.weights, args.out, cfg, args.imgsz, args.cfg)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) after {run['steps']} steps in {run['seconds']} s")
        for key in ("parity_fakequant", "parity_float_finetuned"):
            if key in run:
                print(f"ONNX Runtime vs the torch model ({key}): {run[key]}")
        print(f"ONNX Runtime vs the float model: {run['vs_float_model']}")
        if args.data:
            from ..export import export
            from .report import compare_artifacts, format_report

            ref = out.with_name(out.stem.removesuffix("_qat") + "_fp32ref.onnx")
            export(args.weights, "onnx", out=ref, imgsz=args.imgsz, cfg=args.cfg)
            run["report"] = compare_artifacts(ref, out, args.data)
            print(format_report(run["report"]))
    except PolydetError as e:
        print(f"polydet qat: error: {e}", file=sys.stderr)
        return 2
    if args.report:
        args.report.write_text(json.dumps(run, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
