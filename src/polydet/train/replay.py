"""Reuse of rendered images on the GPU: synthetic rendering is CPU-bound, the train step is not.

``ReplayBuffer`` keeps the last ``k`` loader batches on the device. Each step adds one fresh batch and
draws a training batch from all ``k * B`` images, each under a random symmetry of the square (rot90
and/or a mirror, exact for images and corners), so every rendered image is seen about ``k`` times in
8 possible orientations, spread over ``k`` steps instead of in a row.
"""

from __future__ import annotations

import torch


def d4_transform(imgs: torch.Tensor, targets: torch.Tensor, k: torch.Tensor, flip: torch.Tensor):
    """Rotate image i by ``k[i]`` quarter turns (counter-clockwise on screen), after mirroring it
    left-right where ``flip[i]``; corners follow. ``imgs (B,C,S,S)``, ``targets (T,10)`` rows
    ``[b, cls, x1..y4]`` in pixels with ``0..S`` spanning the image. Corner order is left as it falls
    (the loss re-orders targets canonically)."""
    s = imgs.shape[-1]
    if imgs.shape[-2] != s:
        raise ValueError(f"d4_transform needs square images, got {tuple(imgs.shape[-2:])}")
    out = imgs.clone()
    for kk in range(4):
        for ff in (False, True):
            sel = ((k == kk) & (flip == ff)).nonzero(as_tuple=True)[0]
            if sel.numel() == 0:
                continue
            x = imgs[sel]
            if ff:
                x = x.flip(-1)
            out[sel] = torch.rot90(x, kk, (-2, -1))
    t = targets.clone()
    if t.shape[0]:
        b = t[:, 0].long()
        x, y = t[:, 2:10:2].clone(), t[:, 3:10:2].clone()
        f = flip[b][:, None]
        x = torch.where(f, s - x, x)
        kt = k[b][:, None]
        for _ in range(3):  # one quarter turn CCW on screen (y down): (x, y) -> (y, S - x)
            turn = kt > 0
            x, y = torch.where(turn, y, x), torch.where(turn, s - x, y)
            kt = kt - turn.long()
        t[:, 2:10:2], t[:, 3:10:2] = x, y
    return out, t


class ReplayBuffer:
    """FIFO of the last ``k`` batches (images uint8 on the device, targets ``(T,10)``)."""

    def __init__(self, k: int, generator: torch.Generator | None = None):
        if k < 1:
            raise ValueError(f"replay k must be >= 1, got {k}")
        self.k, self.g = k, generator
        self.imgs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def push(self, imgs: torch.Tensor, targets: torch.Tensor) -> None:
        self.imgs.append(imgs)
        self.targets.append(targets)
        if len(self.imgs) > self.k:
            self.imgs.pop(0)
            self.targets.pop(0)

    def sample(self, batch: int, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of ``batch`` images drawn without replacement from the buffer (randomly oriented)."""
        if self.k == 1 and not augment:
            return self.imgs[-1], self.targets[-1]
        dev = self.imgs[-1].device
        sizes = [x.shape[0] for x in self.imgs]
        offsets = torch.tensor([0, *sizes], device=dev).cumsum(0)
        imgs = torch.cat(self.imgs)
        t = torch.cat([tt.to(dev) + torch.tensor([float(o)] + [0.0] * 9, device=dev)
                       for tt, o in zip(self.targets, offsets[:-1].tolist())])
        pick = torch.randperm(imgs.shape[0], generator=self.g)[:batch].to(dev)
        remap = torch.full((imgs.shape[0],), -1, dtype=torch.long, device=dev)
        remap[pick] = torch.arange(pick.numel(), device=dev)
        new_b = remap[t[:, 0].long()]
        t = t[new_b >= 0]
        t[:, 0] = new_b[new_b >= 0].to(t.dtype)
        out = imgs[pick]
        if augment:
            n = out.shape[0]
            kq = torch.randint(0, 4, (n,), generator=self.g).to(dev)
            fl = (torch.randint(0, 2, (n,), generator=self.g) == 1).to(dev)
            out, t = d4_transform(out, t, kq, fl)
        return out, t
