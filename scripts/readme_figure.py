"""Redraw docs/detections.jpg (the README picture): the bundled model on examples/sample_*.jpg.

    .venv/bin/python scripts/readme_figure.py [--model weights/polydet_main_area.pt] [--out docs/detections.jpg]

Runs the same pipeline as ``polydet predict --draw`` and tiles the drawn images side by side at one height.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from polydet.draw import draw_detections
from polydet.pipeline import Detector, DetectOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="weights/polydet_main_area.pt")
    ap.add_argument("--images", nargs="+", default=sorted(str(p) for p in Path("examples").glob("sample_*.jpg")))
    ap.add_argument("--out", default="docs/detections.jpg")
    ap.add_argument("--height", type=int, default=420)
    args = ap.parse_args()
    det = Detector.from_artifact(args.model)
    tiles = []
    for path in args.images:
        img = cv2.imread(path)
        res = det.detect([img], DetectOptions())[0]
        print(json.dumps({"image": path, **res.to_dict()}))
        drawn = draw_detections(img, res)
        w = round(drawn.shape[1] * args.height / drawn.shape[0])
        tiles.append(cv2.resize(drawn, (w, args.height), interpolation=cv2.INTER_AREA))
        tiles.append(np.full((args.height, 6, 3), 255, np.uint8))
    cv2.imwrite(args.out, np.hstack(tiles[:-1]), [cv2.IMWRITE_JPEG_QUALITY, 88])
    print("wrote", args.out)


if __name__ == "__main__":
    main()
