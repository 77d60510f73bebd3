"""Is training data-bound or GPU-bound? Times the synthetic loader alone and the train step alone.

    python3 scripts/gpu_probe.py --imgsz 224 320 --workers 16 --batch 128
"""

from __future__ import annotations

import argparse
import faulthandler
import time

import cv2
import torch


def loader_rate(imgsz: int, workers: int, batch: int, n_batches: int) -> float:
    from polydet.data.dataset import PolygonDataset, collate

    ds = PolygonDataset("synth", imgsz, augment=True, n=batch * (n_batches + workers * 2), seed=5000)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate,
                                     prefetch_factor=4 if workers else None)
    it = iter(dl)
    for _ in range(workers if workers else 1):  # let every worker deliver once (start-up excluded)
        next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch / (time.perf_counter() - t)


def step_rate(imgsz: int, batch: int, n: int, model_cfg: str) -> float:
    from polydet.model import PolygonYOLO
    from polydet.train.loss import PolygonLoss

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    m = PolygonYOLO(model_cfg, nc=2).to(dev).train()
    loss_fn = PolygonLoss(m, imgsz=imgsz)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randint(0, 255, (batch, 3, imgsz, imgsz), dtype=torch.uint8, device=dev)
    g = torch.Generator().manual_seed(0)
    c = torch.rand(batch * 2, 2, generator=g) * imgsz * 0.6 + imgsz * 0.2
    r = torch.rand(batch * 2, 1, generator=g) * imgsz * 0.3 + 8
    quad = torch.cat((c - r, c + torch.cat((r, -r), 1), c + r, c + torch.cat((-r, r), 1)), 1)
    t = torch.cat((torch.arange(batch * 2)[:, None] % batch, torch.randint(0, 2, (batch * 2, 1)), quad), 1).float()

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            p = m(x.float() / 255)
        loss, _ = loss_fn(p, t.to(dev))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--imgsz", type=int, nargs="+", default=[224, 320])
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--model", default="polygon_yolov5n")
    a = ap.parse_args()
    # Workers are forked: a live OpenCV thread pool in the parent deadlocks them (see polydet.train.loader.make_loader).
    cv2.setNumThreads(1)
    faulthandler.dump_traceback_later(150, exit=True)  # a hang costs device time: die loudly instead
    for s in a.imgsz:
        g = step_rate(s, a.batch, 30, a.model) if torch.cuda.is_available() else float("nan")
        print(f"imgsz {s}: train step {g:.0f} img/s", flush=True)
        d = loader_rate(s, a.workers, a.batch, a.batches)
        print(f"imgsz {s}: train step {g:.0f} img/s (GPU, no loader); loader {d:.0f} img/s ({a.workers} workers)"
              f" -> {'data' if d < g else 'GPU'}-bound", flush=True)


if __name__ == "__main__":
    main()
