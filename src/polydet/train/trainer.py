"""``polydet train``: the seeds' recipe (SGD, warm-up + cosine LR, EMA, AMP) on on-the-fly synthetic data.

Runs resumably under a wall-clock budget so that one job fits a time-limited command: ``last.pt`` holds
the EMA weights (loadable by ``load_model``) plus everything needed to continue; ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..meta import ModelInfo
from ..model import PolygonYOLO, save_checkpoint
from .loader import device_batches, make_loader
from .loss import LossHyp, PolygonLoss
from .replay import ReplayBuffer

NAMES = ["page", "photo"]


@dataclass
class TrainConfig:
    model: str = "polygon_yolov5n"  # shipped cfg name or yaml path
    data: str = "synth"  # "synth" (generated on the fly in the loader workers) or a labelled directory
    synth: str = "v1"  # generator preset for data="synth": v1 (1.0) or train (2.0 on the train sources)
    v1_mix: float | None = None  # override the preset's share of 1.0 scenes (None: the preset's own)
    val: str | None = None  # fixed labelled directory for periodic mAP (None: no validation)
    imgsz: int = 224  # square size of validation and of the saved ModelInfo (the seeds' 224)
    multiscale: tuple[int, ...] = ()  # train sizes cycled step by step (rendered at the largest); () = imgsz
    init: str | None = None  # start from these weights (a checkpoint load_model reads) instead of random
    epochs: int = 60
    epoch_size: int = 8192  # synthetic images per epoch (ignored for a directory: its length)
    batch: int = 64
    workers: int = 8  # loader processes; synthetic rendering is CPU-bound, so use every core
    reuse: int = 1  # train steps per rendered batch (>1 when rendering, not the GPU, is the bottleneck)
    replay_batches: int = 8  # rendered batches kept on the GPU to draw reused, randomly oriented images from
    optimizer: str = "SGD"  # "SGD" (the seeds') or "AdamW"
    lr0: float = 0.01  # SGD 1e-2 (seeds'); use ~1e-3 for AdamW
    lrf: float = 0.01  # final LR = lr0 * lrf at the end of the cosine
    momentum: float = 0.937  # SGD momentum / Adam beta1 (YOLOv5)
    weight_decay: float = 5e-4  # on conv weights only, scaled by batch/64 like YOLOv5
    warmup_epochs: float = 2.0  # linear warm-up (fractions ok), at least 100 iterations
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1  # biases start high and fall to lr0 during warm-up (YOLOv5)
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0  # EMA decay ramps up as 1 - exp(-updates/tau), so early EMA tracks the model
    amp: bool = True  # fp16 autocast + GradScaler on CUDA (fp16 keeps 4x finer corner offsets than bf16)
    seed: int = 0  # base seed: epoch e renders with seed 1000 + 1000*seed + e (never a val seed)
    val_every: int = 5  # epochs between validations (and always after the last epoch)
    val_conf: float = 0.001  # low threshold so the PR curve is complete
    val_iou: float = 0.6
    time_budget_min: float | None = None  # stop cleanly (saving last.pt) before this many minutes
    out: str = "runs/train"
    device: str = ""  # "" = cuda if available else cpu
    save_half: bool = False  # best.pt/final weights as fp16 (halves the file; load_model upcasts)
    hyp: LossHyp = field(default_factory=LossHyp)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {sorted(unknown)}")
        hyp = d.pop("hyp", {})
        if "multiscale" in d:
            d["multiscale"] = tuple(d["multiscale"])
        hyp = hyp if isinstance(hyp, LossHyp) else LossHyp(**{k: tuple(v) if k == "balance" else v
                                                               for k, v in hyp.items()})
        return cls(**d, hyp=hyp)


class ModelEMA:
    """YOLOv5's exponential moving average of weights and buffers (decay ramps up with updates)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


@torch.no_grad()
def validate(model: nn.Module, val_dir: str, imgsz: int, device, conf=0.001, iou=0.6, batch=64, workers=4) -> dict:
    """mAP of ``model`` on a labelled directory, in letterboxed pixels (IoU is scale-invariant)."""
    from ..data.dataset import PolygonDataset, collate
    from ..evaluate import evaluate
    from ..ops.nms import polygon_nms

    ds = PolygonDataset(val_dir, imgsz, augment=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate)
    was_training = model.training
    model.eval()
    preds, gts = [], []
    for imgs, targets in dl:
        out = model(imgs.to(device, non_blocking=True).float() / 255)
        for i, det in enumerate(polygon_nms(out.float(), conf=conf, iou=iou, max_det=100)):
            preds.append(det.cpu().numpy())
            gts.append(targets[targets[:, 0] == i, 1:].cpu().numpy())
    model.train(was_training)
    return evaluate(preds, gts, nc=len(NAMES), names=NAMES)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # YOLOv5's three groups: BN weights (no decay), conv weights (decay), biases (no decay, warm-up lr).
    bn, w, b = [], [], []
    for m in model.modules():
        if hasattr(m, "bias") and isinstance(m.bias, nn.Parameter):
            b.append(m.bias)
        if isinstance(m, nn.BatchNorm2d):
            bn.append(m.weight)
        elif hasattr(m, "weight") and isinstance(m.weight, nn.Parameter):
            w.append(m.weight)
    wd = cfg.weight_decay * max(cfg.batch / 64, 1 / 64)
    if cfg.optimizer == "SGD":
        opt = torch.optim.SGD(bn, lr=cfg.lr0, momentum=cfg.momentum, nesterov=True)
    elif cfg.optimizer == "AdamW":
        opt = torch.optim.AdamW(bn, lr=cfg.lr0, betas=(cfg.momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"optimizer must be SGD or AdamW, got {cfg.optimizer!r}")
    opt.add_param_group({"params": w, "weight_decay": wd})
    opt.add_param_group({"params": b, "weight_decay": 0.0})
    return opt


def _set_lr(opt, cfg: TrainConfig, it: int, total: int, warmup: int) -> None:
    lf = ((1 - math.cos(math.pi * min(it, total) / total)) / 2) * (cfg.lrf - 1) + 1  # cosine 1 -> lrf
    for j, g in enumerate(opt.param_groups):
        target = cfg.lr0 * lf
        if it < warmup:
            start = cfg.warmup_bias_lr if j == 2 else 0.0
            g["lr"] = float(np.interp(it, [0, warmup], [start, target]))
            if "momentum" in g:
                g["momentum"] = float(np.interp(it, [0, warmup], [cfg.warmup_momentum, cfg.momentum]))
        else:
            g["lr"] = target


def _resize(imgs: torch.Tensor, targets: torch.Tensor, size: int):
    """Square batch to ``size`` (antialiased); pixel-edge corner coordinates scale by the same factor."""
    s = imgs.shape[-1]
    if s == size:
        return imgs, targets
    imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    targets = targets.clone()
    targets[:, 2:] *= size / s
    return imgs, targets


def _info(cfg: TrainConfig) -> ModelInfo:
    return ModelInfo(names=list(NAMES), imgsz=cfg.imgsz)


def _save_weights(path: Path, model: nn.Module, cfg: TrainConfig, **extra) -> None:
    m = copy.deepcopy(model).half() if cfg.save_half else model
    save_checkpoint(path, m, _info(cfg), **extra)


def _build(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, ModelEMA, torch.optim.Optimizer]:
    """The run's model (seeded; ``cfg.init``'s weights if given) on ``device`` in train mode, its EMA
    and its optimizer."""
    torch.manual_seed(cfg.seed)
    model = PolygonYOLO(cfg.model, nc=len(NAMES))
    if cfg.init:
        from ..model import load_model

        model.load_state_dict(load_model(cfg.init)[0].state_dict())
    model = model.to(device).train()
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    return model, ema, _optimizer(model, cfg)


class _Run:
    """One call of :func:`train`: the model, EMA, optimizer and scaler, the iteration counter, the
    history, and the wall-clock budget; :meth:`run` steps through the epochs."""

    def __init__(self, cfg: TrainConfig, resume: bool):
        self.t0 = time.monotonic()
        self.cfg, self.out = cfg, Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.ema, self.opt = _build(cfg, self.device)
        self.it, self.best_fitness, self.history = 0, -1.0, []
        st = self._resume() if resume else {}
        self.sizes = tuple(cfg.multiscale) or (cfg.imgsz,)
        self.loss_fns = {sz: PolygonLoss(self.model, cfg.hyp, imgsz=sz) for sz in self.sizes}
        loader, nl = make_loader(cfg, self.it // cfg.reuse)  # nl loader batches per epoch
        self.nb = nl * cfg.reuse  # steps per epoch
        self.total = self.nb * cfg.epochs
        self.warmup = max(round(cfg.warmup_epochs * self.nb), 100)
        replay = (ReplayBuffer(max(cfg.replay_batches, 1), torch.Generator().manual_seed(cfg.seed))
                  if cfg.reuse > 1 else None)
        self.batches = device_batches(loader, replay, cfg.reuse, self.device)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        if resume and self.use_amp and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        self.budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
        # Time kept for the final validation and saves; raised to 1.5x the measured validation time.
        self.reserve_s = 60.0 if cfg.val else 20.0
        self.stopped = False

    def _resume(self) -> dict:
        """Continue from ``out/last.pt``: model, EMA, optimizer and counters; returns its train_state."""
        ck = torch.load(self.out / "last.pt", map_location="cpu", weights_only=True)
        st = ck["train_state"]
        self.model.load_state_dict(st["model"])
        self.ema.ema.load_state_dict(ck["state_dict"])
        self.ema.updates = st["ema_updates"]
        self.opt.load_state_dict(st["optimizer"])
        self.it, self.best_fitness, self.history = st["it"], st["best_fitness"], list(st.get("history", []))
        print(f"resumed from {self.out / 'last.pt'} at iteration {self.it}", flush=True)
        return st

    def state(self, epoch: int) -> dict:
        """What ``last.pt`` holds besides the EMA weights, to resume from."""
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "ema_updates": self.ema.updates, "it": self.it, "epoch": epoch,
                "best_fitness": self.best_fitness, "history": self.history, "config": dataclasses.asdict(self.cfg)}

    def step(self, imgs_u8: torch.Tensor, targets: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
        """One optimizer step on a uint8 batch; returns its size, the loss and its items."""
        model, opt, scaler = self.model, self.opt, self.scaler
        _set_lr(opt, self.cfg, self.it, self.total, self.warmup)
        sz = self.sizes[self.it % len(self.sizes)]
        imgs, targets = _resize(imgs_u8.float() / 255, targets, sz)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            preds = model(imgs)
        loss, items = self.loss_fns[sz](preds, targets)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        scaler.step(opt)
        scaler.update()
        self.ema.update(model)
        self.it += 1
        return imgs.shape[0], loss, items

    def epoch(self) -> None:
        """Steps to the end of this epoch (or of the time budget), then its record and ``last.pt``."""
        from tqdm import tqdm

        epoch = self.it // self.nb
        bar = tqdm(total=self.nb, initial=self.it % self.nb, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                   file=sys.stdout, mininterval=0.5 if sys.stdout.isatty() else 15, dynamic_ncols=True)
        mloss = torch.zeros(4)
        n_seen, t_epoch = 0, time.monotonic()
        i = 0
        for imgs_u8, targets in self.batches:  # one generator for the run; each epoch takes its share
            n, loss, items = self.step(imgs_u8, targets)
            n_seen += n
            mloss = (mloss * i + items.cpu()) / (i + 1)
            i += 1
            bar.set_postfix(box=f"{mloss[0]:.4f}", obj=f"{mloss[1]:.4f}", cls=f"{mloss[2]:.4f}",
                            lr=f"{self.opt.param_groups[1]['lr']:.4g}")
            bar.update(1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {self.it}")
            if time.monotonic() - self.t0 > self.budget_s - self.reserve_s:
                self.stopped = True
            if self.stopped or self.it % self.nb == 0:
                break
        bar.close()
        self._end_epoch(epoch, mloss, n_seen / max(time.monotonic() - t_epoch, 1e-9))

    def _end_epoch(self, epoch: int, mloss: torch.Tensor, ips: float) -> None:
        cfg, it = self.cfg, self.it
        epoch_done = it % self.nb == 0
        rec = {"epoch": epoch + 1, "it": it, "box": float(mloss[0]), "obj": float(mloss[1]),
               "cls": float(mloss[2]), "img_per_s": round(ips, 1), "elapsed_s": round(time.monotonic() - self.t0, 1)}
        # Validate on schedule, at the end, and when the budget stops the run (so its weights count).
        if cfg.val and (self.stopped or (epoch_done and ((epoch + 1) % cfg.val_every == 0 or it >= self.total))):
            self._validate(rec)
        self.history.append(rec)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()), flush=True)
        save_checkpoint(self.out / "last.pt", self.ema.ema, _info(cfg), train_state=self.state(epoch))

    def _validate(self, rec: dict) -> None:
        """mAP of the EMA weights into ``rec``; the best so far become ``best.pt``."""
        cfg = self.cfg
        tv = time.monotonic()
        r = validate(self.ema.ema, cfg.val, cfg.imgsz, self.device, cfg.val_conf, cfg.val_iou,
                     workers=min(cfg.workers, 8))
        self.reserve_s = max(self.reserve_s, 1.5 * (time.monotonic() - tv) + 10)
        fitness = 0.1 * r["map50"] + 0.9 * r["map"]
        rec.update(map50=r["map50"], map=r["map"], precision=r["precision"], recall=r["recall"])
        if fitness > self.best_fitness:
            self.best_fitness = fitness
            _save_weights(self.out / "best.pt", self.ema.ema, cfg, metrics=rec)

    def run(self) -> dict:
        while self.it < self.total and not self.stopped:
            self.epoch()
        done = self.it >= self.total
        if done:
            if not self.cfg.val:
                _save_weights(self.out / "best.pt", self.ema.ema, self.cfg)
            print(f"finished {self.total} iterations; best fitness {self.best_fitness:.4f}", flush=True)
        else:
            print(f"time budget reached at iteration {self.it}/{self.total}; continue with --resume", flush=True)
        return {"done": done, "it": self.it, "total": self.total, "best_fitness": self.best_fitness,
                "last": str(self.out / "last.pt"), "best": str(self.out / "best.pt"), "history": self.history}


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or continue from ``cfg.out/last.pt``). Returns ``{"done", "it", "best_fitness", "last", "best"}``."""
    return _Run(cfg, resume).run()


def make_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="polydet train", description="train the polygon YOLOv5 main-area detector")
    p.add_argument("--model", default=d.model, help="model cfg name or yaml")
    p.add_argument("--data", default=d.data, help='"synth" (on the fly) or a labelled directory')
    p.add_argument("--synth", default=d.synth, help="generator preset for synthetic data: v1 or train "
                   "(2.0, needs `polydet data sources`)")
    p.add_argument("--v1-mix", type=float, default=None, help="share of generator-1.0 scenes in a 2.0 "
                   "preset (default: the preset's, 0.25 for train); more keeps the 1.0 range better")
    p.add_argument("--val", default=d.val, help="labelled directory for periodic validation")
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="validation size, written into the weights")
    p.add_argument("--multiscale", type=int, nargs="+", default=[], help="train sizes cycled per step")
    p.add_argument("--init", help="start from these weights instead of random ones")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--epoch-size", type=int, default=d.epoch_size, help="synthetic images per epoch")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--reuse", type=int, default=d.reuse, help="train steps per rendered batch (GPU replay)")
    p.add_argument("--replay-batches", type=int, default=d.replay_batches)
    p.add_argument("--optimizer", choices=["SGD", "AdamW"], default=d.optimizer)
    p.add_argument("--lr0", type=float, default=d.lr0)
    p.add_argument("--lrf", type=float, default=d.lrf)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--box", type=float, default=d.hyp.box, help="corner Smooth-L1 loss gain")
    p.add_argument("--obj", type=float, default=d.hyp.obj, help="objectness loss gain at 640 px")
    p.add_argument("--cls", type=float, default=d.hyp.cls, help="class loss gain")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--save-half", action="store_true", help="write best.pt as fp16")
    p.add_argument("--device", default=d.device)
    p.add_argument("--out", default=d.out)
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="stop cleanly (saving last.pt) before this many minutes")
    p.add_argument("--resume", action="store_true",
                   help="continue OUT/last.pt with its saved config (only --time-budget-min/--workers/--device apply)")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    if a.resume:
        ck = torch.load(Path(a.out) / "last.pt", map_location="cpu", weights_only=True)
        cfg = TrainConfig.from_dict(ck["train_state"]["config"])
        cfg.time_budget_min, cfg.workers, cfg.out = a.time_budget_min, a.workers, a.out
        cfg.device = a.device or cfg.device
        return cfg
    hyp = dataclasses.replace(LossHyp(), box=a.box, obj=a.obj, cls=a.cls)
    return TrainConfig(model=a.model, data=a.data, synth=a.synth, v1_mix=a.v1_mix, val=a.val, imgsz=a.imgsz, multiscale=tuple(a.multiscale), init=a.init, epochs=a.epochs,
                       epoch_size=a.epoch_size, batch=a.batch, workers=a.workers, reuse=a.reuse,
                       replay_batches=a.replay_batches, optimizer=a.optimizer,
                       lr0=a.lr0, lrf=a.lrf, warmup_epochs=a.warmup_epochs, seed=a.seed, val_every=a.val_every,
                       amp=not a.no_amp, save_half=a.save_half, device=a.device, out=a.out,
                       time_budget_min=a.time_budget_min, hyp=hyp)


def main(argv: list[str] | None = None) -> int:
    a = make_parser().parse_args(argv)
    r = train(config_from_args(a), resume=a.resume)
    return 0 if r["done"] or a.time_budget_min else 1
