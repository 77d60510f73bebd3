"""Detection metrics with exact polygon IoU, and ``polydet eval`` over any artifact the package loads.

mAP is COCO's: per class, greedy matching by descending score (each prediction takes the unmatched
ground truth of its class with the highest IoU >= threshold), 101-point interpolated AP, averaged over
classes that have ground truth and over IoU thresholds .50:.05:.95. P and R are reported at the single
confidence threshold that maximises the class-mean F1 at IoU 0.5 (YOLOv5's choice); that threshold is
returned as ``conf_best_f1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from .ops.letterbox import PAD_VALUE

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def ap_101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP of one ranked list: ``recall, precision (K,)`` -> AP in [0, 1].

    Precision is made monotone (max to the right), then sampled at recall 0, .01, ..., 1 (0 where the
    recall level is never reached). Empty lists give 0.
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0).mean())


def match_predictions(pred: np.ndarray, gt: np.ndarray, iou_thresholds=IOU_THRESHOLDS) -> np.ndarray:
    """Which predictions are true positives, per IoU threshold, for one image.

    ``pred (N, 10)`` rows ``[x1..y4, score, cls]``; ``gt (M, 9)`` rows ``[cls, x1..y4]`` (same pixels).
    Returns ``correct (N, T)`` bool, rows in the order of ``pred``. Greedy by descending score; a
    prediction only matches a ground truth of its own class, each ground truth at most once.
    """
    from .ops.polygon import polygon_iou

    pred, gt = np.asarray(pred, np.float64).reshape(-1, 10), np.asarray(gt, np.float64).reshape(-1, 9)
    thr = np.asarray(iou_thresholds, float)
    correct = np.zeros((pred.shape[0], thr.size), bool)
    if pred.shape[0] == 0 or gt.shape[0] == 0:
        return correct
    iou = polygon_iou(torch.from_numpy(pred[:, :8]).view(-1, 4, 2),
                      torch.from_numpy(gt[:, 1:9]).view(-1, 4, 2)).numpy()
    iou = np.where(pred[:, 9:10] == gt[None, :, 0], iou, -1.0)  # other classes never match
    order = np.argsort(-pred[:, 8], kind="stable")
    for t, th in enumerate(thr):
        taken = np.zeros(gt.shape[0], bool)
        for i in order:
            cand = np.where(taken, -1.0, iou[i])
            j = int(cand.argmax())
            if cand[j] >= th:
                taken[j] = True
                correct[i, t] = True
    return correct


def evaluate(preds: list, gts: list, nc: int | None = None, names: list[str] | None = None,
             iou_thresholds=IOU_THRESHOLDS) -> dict:
    """Dataset metrics. ``preds[i] (N_i, 10) [x1..y4, score, cls]``, ``gts[i] (M_i, 9) [cls, x1..y4]``.

    Returns ``{"map50", "map", "precision", "recall", "f1", "conf_best_f1", "per_class": {name:
    {"ap50", "ap", "n_gt", "n_pred"}}, "n_images", "n_gt"}``. Classes without ground truth have AP NaN
    and are left out of the means; with no ground truth at all every mean is NaN.
    """
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction lists for {len(gts)} images")
    preds = [np.asarray(p, np.float64).reshape(-1, 10) for p in preds]
    gts = [np.asarray(g, np.float64).reshape(-1, 9) for g in gts]
    thr = np.asarray(iou_thresholds, float)
    i50 = int(np.argmin(np.abs(thr - 0.5)))
    correct = [match_predictions(p, g, thr) for p, g in zip(preds, gts)]
    tp = np.concatenate(correct) if correct else np.zeros((0, thr.size), bool)
    scores = np.concatenate([p[:, 8] for p in preds]) if preds else np.zeros(0)
    pcls = np.concatenate([p[:, 9] for p in preds]).astype(int) if preds else np.zeros(0, int)
    gcls = np.concatenate([g[:, 0] for g in gts]).astype(int) if gts else np.zeros(0, int)
    if nc is None:
        nc = int(max(pcls.max(initial=-1), gcls.max(initial=-1)) + 1) if names is None else len(names)
    names = list(names) if names is not None else [str(c) for c in range(nc)]

    confs = np.linspace(0, 1, 1001)
    ap = np.full((nc, thr.size), np.nan)
    p_curve, r_curve = np.zeros((nc, confs.size)), np.zeros((nc, confs.size))
    per_class = {}
    for c in range(nc):
        n_gt = int((gcls == c).sum())
        sel = pcls == c
        order = np.argsort(-scores[sel], kind="stable")
        tpc, sc = tp[sel][order], scores[sel][order]
        per_class[names[c]] = {"n_gt": n_gt, "n_pred": int(sel.sum())}
        if n_gt == 0:
            continue
        ctp = np.cumsum(tpc, 0)
        cfp = np.cumsum(~tpc, 0)
        recall = ctp / n_gt
        precision = ctp / np.maximum(ctp + cfp, 1)
        ap[c] = [ap_101(recall[:, t], precision[:, t]) for t in range(thr.size)]
        # P, R at IoU .5 as functions of the confidence threshold: keep predictions with score >= conf.
        k = np.searchsorted(-sc, -confs, side="right")  # number of predictions with score >= conf
        tp_k = np.concatenate(([0], ctp[:, i50]))[k]
        p_curve[c] = np.where(k > 0, tp_k / np.maximum(k, 1), 1.0)
        r_curve[c] = tp_k / n_gt
    for c in range(nc):
        per_class[names[c]].update(ap50=float(ap[c, i50]), ap=float(np.mean(ap[c])))
    has_gt = ~np.isnan(ap[:, 0])
    if has_gt.any():
        p_m, r_m = p_curve[has_gt].mean(0), r_curve[has_gt].mean(0)
        f1 = 2 * p_m * r_m / np.maximum(p_m + r_m, 1e-16)
        b = int(f1.argmax())
        summary = {"map50": float(ap[has_gt, i50].mean()), "map": float(ap[has_gt].mean()),
                   "precision": float(p_m[b]), "recall": float(r_m[b]), "f1": float(f1[b]),
                   "conf_best_f1": float(confs[b])}
    else:
        summary = dict.fromkeys(("map50", "map", "precision", "recall", "f1", "conf_best_f1"), math.nan)
    return {**summary, "per_class": per_class, "n_images": len(gts), "n_gt": int(gcls.size)}


# --------------------------------------------------------------------------- a dataset directory


def read_labels(txt: Path, width: int, height: int) -> np.ndarray:
    """``class x1 y1 ... x4 y4`` normalised lines -> ``(M, 9)`` in pixels; a missing file is no objects."""
    if not txt.is_file():
        return np.zeros((0, 9))
    rows = [line.split() for line in txt.read_text().splitlines() if line.strip()]
    if any(len(r) != 9 for r in rows):
        raise ValueError(f"{txt}: every label line must have 9 numbers (class x1 y1 ... x4 y4)")
    lab = np.array(rows, np.float64).reshape(-1, 9)
    lab[:, 1::2] *= width
    lab[:, 2::2] *= height
    return lab


def list_images(data_dir: str | Path) -> list[Path]:
    """Labelled images of a directory: an image without a same-stem .txt (e.g. preview.jpg) is not data;
    an image with no objects has an empty .txt."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {d}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.with_suffix(".txt").is_file())
    if not files:
        raise FileNotFoundError(f"no labelled images (NAME.jpg + NAME.txt) in {d}")
    return files


def draw_grid(images: list[np.ndarray], preds: list, gts: list, names: list[str], out: str | Path,
              cols: int = 4, cell: int = 320, conf: float = 0.25) -> None:
    """Tile BGR images with ground truth (green) and predictions with score >= ``conf`` (red, label)."""
    import cv2

    tiles = []
    for img, p, g in zip(images, preds, gts):
        s = cell / max(img.shape[:2])
        im = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))))
        for row in np.asarray(g).reshape(-1, 9):
            cv2.polylines(im, [np.round(row[1:].reshape(4, 2) * s).astype(np.int32)], True, (0, 255, 0), 2)
        for row in np.asarray(p).reshape(-1, 10):
            if row[8] < conf:
                continue
            q = np.round(row[:8].reshape(4, 2) * s).astype(np.int32)
            cv2.polylines(im, [q], True, (0, 0, 255), 1)
            cv2.circle(im, tuple(int(v) for v in q[0]), 3, (255, 0, 0), -1)  # first corner (TL)
            label = f"{names[int(row[9])] if int(row[9]) < len(names) else int(row[9])} {row[8]:.2f}"
            cv2.putText(im, label, tuple(int(v) for v in q[0]), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
        canvas = np.full((cell, cell, 3), PAD_VALUE, np.uint8)
        canvas[:im.shape[0], :im.shape[1]] = im
        tiles.append(canvas)
    if not tiles:
        return
    while len(tiles) % cols:
        tiles.append(np.full((cell, cell, 3), PAD_VALUE, np.uint8))
    rows = [np.concatenate(tiles[i:i + cols], 1) for i in range(0, len(tiles), cols)]
    cv2.imwrite(str(out), np.concatenate(rows, 0))


def evaluate_artifact(model_path: str | Path, data_dir: str | Path, device: str = "cpu", conf: float = 0.001,
                      iou: float = 0.6, max_det: int = 100, batch: int = 16, imgsz: int | None = None,
                      grid: str | Path | None = None, grid_n: int = 16) -> dict:
    """Run ``Detector.from_artifact`` over every image of ``data_dir`` (original pixels) and score it.

    ``imgsz`` overrides the artifact's input size; only an eager checkpoint or a dynamic export accepts it.
    """
    import cv2

    from .pipeline import DetectOptions, Detector
    from .preprocess import CpuPreprocessor

    files = list_images(data_dir)
    det = Detector.from_artifact(model_path, device=device,
                                 options=DetectOptions(conf=conf, iou=iou, max_det=max_det))
    if imgsz and imgsz != det.info.imgsz:
        if not (det.info.dynamic or det.backend.capabilities.shapes == "any"):
            raise ValueError(f"{model_path} is a fixed {det.info.imgsz} px export: --imgsz {imgsz} needs an "
                             "eager checkpoint or a --dynamic export")
        info = dataclasses.replace(det.info, imgsz=imgsz)
        det = Detector(det.backend, det.options, preprocessor=CpuPreprocessor(info, det.device, det.backend.input_dtype))
    preds, gts, shown = [], [], []
    for i in range(0, len(files), batch):
        imgs = []
        for f in files[i:i + batch]:
            im = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if im is None:
                raise ValueError(f"cannot read image {f}")
            imgs.append(im)
            gts.append(read_labels(f.with_suffix(".txt"), im.shape[1], im.shape[0]))
        for res in det.detect(imgs):
            preds.append(np.concatenate([res.polygons.reshape(-1, 8), res.scores[:, None], res.class_ids[:, None]], 1))
        shown.extend(imgs[:max(0, grid_n - len(shown))])
    names = list(det.info.names)
    result = evaluate(preds, gts, nc=len(names), names=names)
    result.update(model=str(model_path), data=str(data_dir), conf=conf, iou=iou, imgsz=det.info.imgsz)
    if grid:
        draw_grid(shown, preds[:len(shown)], gts[:len(shown)], names, grid)
    return result


def format_result(r: dict) -> str:
    lines = [f"images {r['n_images']}  objects {r['n_gt']}",
             f"mAP50 {r['map50']:.4f}  mAP50-95 {r['map']:.4f}  P {r['precision']:.4f}  R {r['recall']:.4f}"
             f"  (P/R at conf {r['conf_best_f1']:.3f}, the max-F1 threshold)"]
    for name, c in r["per_class"].items():
        lines.append(f"  {name:>8}: AP50 {c['ap50']:.4f}  AP50-95 {c['ap']:.4f}  gt {c['n_gt']}  pred {c['n_pred']}")
    return "\n".join(lines)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet eval", description="mAP of a model artifact on a labelled directory")
    p.add_argument("--model", required=True, help="artifact: eager checkpoint, TorchScript or ONNX")
    p.add_argument("--data", required=True, help="directory of NAME.jpg + NAME.txt (normalised polygon labels)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--imgsz", type=int, help="input size (default: the artifact's own)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold before NMS (low: full PR curve)")
    p.add_argument("--iou", type=float, default=0.6, help="NMS polygon IoU threshold")
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--grid", help="write a picture grid of predictions (red) vs ground truth (green) here")
    p.add_argument("--json", help="also write the metrics as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    r = evaluate_artifact(args.model, args.data, device=args.device, conf=args.conf, iou=args.iou,
                          max_det=args.max_det, batch=args.batch, imgsz=args.imgsz, grid=args.grid)
    print(format_result(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
