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
from .loss import LossHyp, PolygonLoss
from .replay import ReplayBuffer

NAMES = ["page", "photo"]
# Never generate training data with these seeds: validation sets are made with them.
RESERVED_VAL_SEEDS = frozenset(range(990, 1000))


@dataclass
class TrainConfig:
    model: str = "polygon_yolov5n"  # shipped cfg name or yaml path
    data: str = "synth"  # "synth" (generated on the fly in the loader workers) or a labelled directory
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


def _seed_for_epoch(cfg: TrainConfig, epoch: int) -> int:
    """Data seed: synthetic images are ``default_rng([seed, i])`` with ``i`` unique over the whole run."""
    s = 1000 + 1000 * cfg.seed + epoch
    if s in RESERVED_VAL_SEEDS:
        raise ValueError(f"training seed {s} is reserved for validation sets")
    return s


class _RunData(torch.utils.data.Dataset):
    """The whole run's training images as one index space, so one loader (forked once) serves every
    epoch: synthetic image ``g`` is unique over the run; for a directory, ``g = epoch * n + file`` and
    the epoch picks the augmentation seed."""

    def __init__(self, base, synth: bool, n_files: int, cfg: TrainConfig):
        self.base, self.synth, self.n_files, self.cfg = base, synth, n_files, cfg

    def __len__(self) -> int:
        return len(self.base) if self.synth else self.n_files * self.cfg.epochs

    def __getitem__(self, g: int):
        if self.synth:
            return self.base[g]
        self.base.seed = _seed_for_epoch(self.cfg, g // self.n_files)  # this worker's copy only
        return self.base[g % self.n_files]


class _RunSampler(torch.utils.data.Sampler):
    """Indices of loader batches ``start..stop`` (epoch by epoch; shuffled per epoch for a directory)."""

    def __init__(self, synth: bool, n_files: int, per_epoch: int, batch: int, start: int, stop: int, seed: int):
        self.synth, self.n_files, self.per_epoch, self.batch = synth, n_files, per_epoch, batch
        self.start, self.stop, self.seed = start, stop, seed

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.batch

    def __iter__(self):
        for b in range(self.start, self.stop):
            epoch, k = divmod(b, self.per_epoch)
            if self.synth:
                yield from range(b * self.batch, (b + 1) * self.batch)
            else:
                perm = torch.randperm(self.n_files, generator=torch.Generator().manual_seed(self.seed + epoch))
                yield from (epoch * self.n_files + int(j) for j in perm[k * self.batch:(k + 1) * self.batch])


def make_loader(cfg: TrainConfig, start_batch: int = 0) -> tuple[torch.utils.data.DataLoader, int]:
    """One loader for the rest of the run, from loader batch ``start_batch``. Returns it and the number
    of loader batches per epoch."""
    import cv2

    from ..data.dataset import PolygonDataset, collate

    # Loader workers are forked: an OpenCV thread pool alive in this process deadlocks a forked child
    # at its first cv2.setNumThreads call, so keep OpenCV single-threaded here.
    cv2.setNumThreads(1)
    synth = cfg.data == "synth"
    size = max((cfg.imgsz, *cfg.multiscale))  # render once at the largest train size
    if synth:
        per_epoch = cfg.epoch_size // cfg.batch
        base = PolygonDataset("synth", size, augment=True, n=per_epoch * cfg.batch * cfg.epochs,
                              seed=_seed_for_epoch(cfg, 0))
        n_files = 0
    else:
        base = PolygonDataset(cfg.data, size, augment=True, seed=_seed_for_epoch(cfg, 0))
        n_files = len(base)
        per_epoch = n_files // cfg.batch
    if per_epoch < 1:
        raise ValueError(f"an epoch has fewer images than one batch of {cfg.batch}")
    sampler = _RunSampler(synth, n_files, per_epoch, cfg.batch, start_batch, per_epoch * cfg.epochs,
                          _seed_for_epoch(cfg, 0))
    loader = torch.utils.data.DataLoader(_RunData(base, synth, n_files, cfg), batch_size=cfg.batch,
                                         sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
                                         drop_last=True, pin_memory=torch.cuda.is_available(),
                                         prefetch_factor=4 if cfg.workers else None)
    return loader, per_epoch


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


def _batches(loader, replay: ReplayBuffer | None, reuse: int, device):
    """Training batches on the device: the loader's, or ``reuse`` replay draws per loader batch."""
    for imgs, targets in loader:
        imgs, targets = imgs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if replay is None:
            yield imgs, targets
            continue
        replay.push(imgs, targets)
        for _ in range(reuse):
            yield replay.sample(imgs.shape[0])


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


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train (or continue from ``cfg.out/last.pt``). Returns ``{"done", "it", "best_fitness", "last", "best"}``."""
    t0 = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.seed)
    model = PolygonYOLO(cfg.model, nc=len(NAMES))
    if cfg.init:
        from ..model import load_model

        model.load_state_dict(load_model(cfg.init)[0].state_dict())
    model = model.to(device).train()
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_tau)
    opt = _optimizer(model, cfg)
    it, best_fitness, history, st = 0, -1.0, [], {}
    if resume:
        ck = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        st = ck["train_state"]
        model.load_state_dict(st["model"])
        ema.ema.load_state_dict(ck["state_dict"])
        ema.updates = st["ema_updates"]
        opt.load_state_dict(st["optimizer"])
        it, best_fitness, history = st["it"], st["best_fitness"], list(st.get("history", []))
        print(f"resumed from {out / 'last.pt'} at iteration {it}", flush=True)
    sizes = tuple(cfg.multiscale) or (cfg.imgsz,)
    loss_fns = {sz: PolygonLoss(model, cfg.hyp, imgsz=sz) for sz in sizes}
    loader, nl = make_loader(cfg, it // cfg.reuse)  # nl loader batches per epoch
    nb = nl * cfg.reuse  # steps per epoch
    total = nb * cfg.epochs
    warmup = max(round(cfg.warmup_epochs * nb), 100)
    replay = ReplayBuffer(max(cfg.replay_batches, 1), torch.Generator().manual_seed(cfg.seed)) if cfg.reuse > 1 else None
    batches = _batches(loader, replay, cfg.reuse, device)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if resume and use_amp and st.get("scaler"):
        scaler.load_state_dict(st["scaler"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else math.inf
    # Time kept for the final validation and saves; raised to 1.5x the measured validation time.
    reserve_s = 60.0 if cfg.val else 20.0
    stopped = False

    def state(epoch: int) -> dict:
        return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "ema_updates": ema.updates, "it": it, "epoch": epoch,
                "best_fitness": best_fitness, "history": history, "config": dataclasses.asdict(cfg)}

    from tqdm import tqdm

    while it < total and not stopped:
        epoch = it // nb
        start_in_epoch = it % nb
        bar = tqdm(total=nb, initial=start_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stdout,
                   mininterval=0.5 if sys.stdout.isatty() else 15, dynamic_ncols=True)
        mloss = torch.zeros(4)
        n_seen, t_epoch = 0, time.monotonic()
        i = 0
        for imgs_u8, targets in batches:  # one generator for the run; each epoch takes its share
            _set_lr(opt, cfg, it, total, warmup)
            sz = sizes[it % len(sizes)]
            imgs, targets = _resize(imgs_u8.float() / 255, targets, sz)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                preds = model(imgs)
            loss, items = loss_fns[sz](preds, targets)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(opt)
            scaler.update()
            ema.update(model)
            it += 1
            n_seen += imgs.shape[0]
            mloss = (mloss * i + items.cpu()) / (i + 1)
            i += 1
            bar.set_postfix(box=f"{mloss[0]:.4f}", obj=f"{mloss[1]:.4f}", cls=f"{mloss[2]:.4f}",
                            lr=f"{opt.param_groups[1]['lr']:.4g}")
            bar.update(1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at iteration {it}")
            if time.monotonic() - t0 > budget_s - reserve_s:
                stopped = True
            if stopped or it % nb == 0:
                break
        bar.close()
        ips = n_seen / max(time.monotonic() - t_epoch, 1e-9)
        epoch_done = it % nb == 0
        rec = {"epoch": epoch + 1, "it": it, "box": float(mloss[0]), "obj": float(mloss[1]),
               "cls": float(mloss[2]), "img_per_s": round(ips, 1), "elapsed_s": round(time.monotonic() - t0, 1)}
        # Validate on schedule, at the end, and when the budget stops the run (so its weights count).
        if cfg.val and (stopped or (epoch_done and ((epoch + 1) % cfg.val_every == 0 or it >= total))):
            tv = time.monotonic()
            r = validate(ema.ema, cfg.val, cfg.imgsz, device, cfg.val_conf, cfg.val_iou, workers=min(cfg.workers, 8))
            reserve_s = max(reserve_s, 1.5 * (time.monotonic() - tv) + 10)
            fitness = 0.1 * r["map50"] + 0.9 * r["map"]
            rec.update(map50=r["map50"], map=r["map"], precision=r["precision"], recall=r["recall"])
            if fitness > best_fitness:
                best_fitness = fitness
                _save_weights(out / "best.pt", ema.ema, cfg, metrics=rec)
        history.append(rec)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()), flush=True)
        save_checkpoint(out / "last.pt", ema.ema, _info(cfg), train_state=state(epoch))
    done = it >= total
    if done:
        if not cfg.val:
            _save_weights(out / "best.pt", ema.ema, cfg)
        print(f"finished {total} iterations; best fitness {best_fitness:.4f}", flush=True)
    else:
        print(f"time budget reached at iteration {it}/{total}; continue with --resume", flush=True)
    return {"done": done, "it": it, "total": total, "best_fitness": best_fitness,
            "last": str(out / "last.pt"), "best": str(out / "best.pt"), "history": history}


def make_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="polydet train", description="train the polygon YOLOv5 main-area detector")
    p.add_argument("--model", default=d.model, help="model cfg name or yaml")
    p.add_argument("--data", default=d.data, help='"synth" (on the fly) or a labelled directory')
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
    return TrainConfig(model=a.model, data=a.data, val=a.val, imgsz=a.imgsz, multiscale=tuple(a.multiscale), init=a.init, epochs=a.epochs,
                       epoch_size=a.epoch_size, batch=a.batch, workers=a.workers, reuse=a.reuse,
                       replay_batches=a.replay_batches, optimizer=a.optimizer,
                       lr0=a.lr0, lrf=a.lrf, warmup_epochs=a.warmup_epochs, seed=a.seed, val_every=a.val_every,
                       amp=not a.no_amp, save_half=a.save_half, device=a.device, out=a.out,
                       time_budget_min=a.time_budget_min, hyp=hyp)


def main(argv: list[str] | None = None) -> int:
    a = make_parser().parse_args(argv)
    r = train(config_from_args(a), resume=a.resume)
    return 0 if r["done"] or a.time_budget_min else 1
