"""CPU latency of the full pipeline (decode excluded: letterbox, model, NMS, unmap) for checkpoints.

    python3 scripts/gpu_latency.py --images DIR --threads 1 4 WEIGHTS.pt [WEIGHTS.pt ...]

Batch 1, median of ``--n`` timed calls after 10 warm-ups, cycling over the first 8 images of DIR.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--images", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--n", type=int, default=50)
    a = ap.parse_args()
    from polydet.pipeline import Detector

    imgs = [cv2.imread(str(p)) for p in sorted(Path(a.images).glob("*.jpg"))[:8]]
    for th in a.threads:
        torch.set_num_threads(th)
        for w in a.weights:
            det = Detector.from_artifact(w, device="cpu")
            for i in range(10):
                det.detect([imgs[i % len(imgs)]])
            total, stages = [], {"preprocess": [], "inference": [], "postprocess": []}
            for i in range(a.n):
                t = time.perf_counter()
                timings = det.detect([imgs[i % len(imgs)]]).timings
                total.append((time.perf_counter() - t) * 1e3)
                for k in stages:
                    stages[k].append(getattr(timings, k))
            med = {k: statistics.median(v) for k, v in stages.items()}
            print(f"{Path(w).name} imgsz {det.info.imgsz} threads {th}: {statistics.median(total):.1f} ms median "
                  f"(pre {med['preprocess']:.1f}, model {med['inference']:.1f}, post {med['postprocess']:.1f})",
                  flush=True)


if __name__ == "__main__":
    main()
