"""The training run's data: one loader for the whole run, its seeds, and batches on the device.

Synthetic images are rendered in the loader workers from a seed unique over the run; a labelled
directory is reshuffled and re-augmented per epoch. A resumed run starts the loader at the loader
batch it stopped at, so it sees the images it would have seen without the stop.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .replay import ReplayBuffer

if TYPE_CHECKING:
    from .trainer import TrainConfig

# Never generate training data with these seeds: validation sets are made with them.
RESERVED_VAL_SEEDS = frozenset(range(990, 1000))


def seed_for_epoch(cfg: TrainConfig, epoch: int) -> int:
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
        self.base.seed = seed_for_epoch(self.cfg, g // self.n_files)  # this worker's copy only
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


def synth_config(name: str, v1_mix: float | None = None):
    """The generator settings a run trains on (None: the dataset's default, generator 1.0's); the held-out
    preset is refused (it is for scoring only). ``v1_mix`` overrides a 2.0 preset's share of 1.0 scenes."""
    if name == "heldout":
        raise ValueError("the heldout generator preset draws from the held-out sources: never train on it")
    if v1_mix is not None and not 0.0 <= v1_mix <= 1.0:
        raise ValueError(f"--v1-mix must be within [0, 1], got {v1_mix}")
    if name == "v1":
        return None
    from ..data.synth2 import preset

    cfg = preset(name)
    return cfg if v1_mix is None else dataclasses.replace(cfg, v1_mix=v1_mix)


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
                              seed=seed_for_epoch(cfg, 0),
                              **({"cfg": synth_config(cfg.synth, cfg.v1_mix)} if cfg.synth != "v1" else {}))
        n_files = 0
    else:
        base = PolygonDataset(cfg.data, size, augment=True, seed=seed_for_epoch(cfg, 0))
        n_files = len(base)
        per_epoch = n_files // cfg.batch
    if per_epoch < 1:
        raise ValueError(f"an epoch has fewer images than one batch of {cfg.batch}")
    sampler = _RunSampler(synth, n_files, per_epoch, cfg.batch, start_batch, per_epoch * cfg.epochs,
                          seed_for_epoch(cfg, 0))
    loader = torch.utils.data.DataLoader(_RunData(base, synth, n_files, cfg), batch_size=cfg.batch,
                                         sampler=sampler, num_workers=cfg.workers, collate_fn=collate,
                                         drop_last=True, pin_memory=torch.cuda.is_available(),
                                         prefetch_factor=4 if cfg.workers else None)
    return loader, per_epoch


def device_batches(loader, replay: ReplayBuffer | None, reuse: int, device):
    """Training batches on the device: the loader's, or ``reuse`` replay draws per loader batch."""
    for imgs, targets in loader:
        imgs, targets = imgs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if replay is None:
            yield imgs, targets
            continue
        replay.push(imgs, targets)
        for _ in range(reuse):
            yield replay.sample(imgs.shape[0])
