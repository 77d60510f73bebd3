"""``polydet data report``: how a model does on a labelled set, beyond one mAP.

mAP50 / mAP50-95 per class (``polydet.evaluate``), the same per size band (quad area / image area; a
band keeps the ground truth and the predictions whose area falls in it, COCO's area ranges), recall per
band at the serving threshold, the page/photo confusion matrix, and a picture grid of the images with
the most errors (``polydet.evaluate.draw_grid``: ground truth green, predictions red).

Confusion (at ``conf``, IoU >= 0.5, class-agnostic greedy matching by score): each ground truth is
predicted as page, photo or missed; each unmatched prediction is a false positive of its class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..evaluate import draw_grid, evaluate, list_images, read_labels

BANDS = ((0.0, 0.03), (0.03, 0.05), (0.05, 0.1), (0.1, 0.3), (0.3, 1.01))


def _area(quads: np.ndarray) -> np.ndarray:
    """Shoelace areas of (N, 4, 2) quads."""
    x, y = quads[..., 0], quads[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, 1) - y * np.roll(x, -1, 1)).sum(1))


def _iou(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    import torch

    from ..ops.polygon import polygon_iou

    if len(p) == 0 or len(g) == 0:
        return np.zeros((len(p), len(g)))
    return polygon_iou(torch.from_numpy(p.reshape(-1, 4, 2)).double(), torch.from_numpy(g.reshape(-1, 4, 2)).double()).numpy()


def match_agnostic(pred: np.ndarray, gt: np.ndarray, conf: float, iou: float = 0.5):
    """Greedy class-agnostic matching of predictions with score >= conf: returns (gt_to_pred (M,) index
    or -1, unmatched prediction indices)."""
    keep = np.where(pred[:, 8] >= conf)[0]
    keep = keep[np.argsort(-pred[keep, 8], kind="stable")]
    ious = _iou(pred[keep, :8], gt[:, 1:9])
    g2p = np.full(len(gt), -1)
    fps = []
    for r, i in enumerate(keep):
        cand = np.where(g2p >= 0, -1.0, ious[r]) if len(gt) else np.zeros(0)
        j = int(cand.argmax()) if len(cand) else -1
        if j >= 0 and cand[j] >= iou:
            g2p[j] = i
        else:
            fps.append(int(i))
    return g2p, fps


def confusion(preds, gts, sizes, names, conf: float) -> dict:
    """Rows: ground truth class (+ "background" for false positives); columns: predicted class + "missed"."""
    nc = len(names)
    m = np.zeros((nc + 1, nc + 1), int)
    errors = np.zeros(len(gts), int)
    band_hits = np.zeros((len(BANDS), 2), int)  # found (any class), total
    for k, (p, g, (w, h)) in enumerate(zip(preds, gts, sizes)):
        g2p, fps = match_agnostic(p, g, conf)
        for j, i in enumerate(g2p):
            col = nc if i < 0 else int(p[i, 9])
            m[int(g[j, 0]), col] += 1
            errors[k] += int(col != int(g[j, 0]))
        for i in fps:
            m[nc, int(p[i, 9])] += 1
        errors[k] += len(fps)
        frac = _area(g[:, 1:9].reshape(-1, 4, 2)) / (w * h)
        for b, (lo, hi) in enumerate(BANDS):
            sel = (frac >= lo) & (frac < hi)
            band_hits[b] += [int((g2p[sel] >= 0).sum()), int(sel.sum())]
    rows = list(names) + ["background"]
    cols = list(names) + ["missed"]
    table = {r: {c: int(m[i, j]) for j, c in enumerate(cols)} for i, r in enumerate(rows)}
    n_obj = m[:nc].sum()
    cross = sum(m[i, j] for i in range(nc) for j in range(nc) if i != j)
    return {"conf": conf, "matrix": table, "page_photo_confusion": float(cross / max(n_obj, 1)),
            "recall_by_band": {f"{lo:.2f}-{min(hi, 1):.2f}": {"found": int(f), "n": int(t),
                                                             "recall": float(f / t) if t else None}
                               for (lo, hi), (f, t) in zip(BANDS, band_hits)},
            "false_positives": int(m[nc].sum()), "errors_per_image": errors.tolist()}


def by_band(preds, gts, sizes, names) -> dict:
    out = {}
    for lo, hi in BANDS:
        bp, bg = [], []
        for p, g, (w, h) in zip(preds, gts, sizes):
            pa = _area(p[:, :8].reshape(-1, 4, 2)) / (w * h)
            ga = _area(g[:, 1:9].reshape(-1, 4, 2)) / (w * h)
            bp.append(p[(pa >= lo) & (pa < hi)])
            bg.append(g[(ga >= lo) & (ga < hi)])
        r = evaluate(bp, bg, nc=len(names), names=names)
        out[f"{lo:.2f}-{min(hi, 1):.2f}"] = {"map50": r["map50"], "map": r["map"], "n_gt": r["n_gt"]}
    return out


def predict(model: str, data: str, device: str = "cpu", imgsz: int | None = None, batch: int = 16):
    """Predictions (N_i, 10), ground truths (M_i, 9) and (w, h) of every labelled image of ``data``."""
    import dataclasses

    import cv2

    from ..pipeline import DetectOptions, Detector
    from ..preprocess import CpuPreprocessor

    det = Detector.from_artifact(model, device=device, options=DetectOptions(conf=0.001, iou=0.6, max_det=100))
    if imgsz and imgsz != det.info.imgsz:
        info = dataclasses.replace(det.info, imgsz=imgsz)
        det = Detector(det.backend, det.options, preprocessor=CpuPreprocessor(info, det.device, det.backend.input_dtype))
    files = list_images(data)
    preds, gts, sizes = [], [], []
    for i in range(0, len(files), batch):
        imgs = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files[i:i + batch]]
        for f, im in zip(files[i:i + batch], imgs):
            gts.append(read_labels(f.with_suffix(".txt"), im.shape[1], im.shape[0]).astype(np.float64))
            sizes.append((im.shape[1], im.shape[0]))
        for res in det.detect(imgs):
            preds.append(np.concatenate([res.polygons.reshape(-1, 8), res.scores[:, None],
                                         res.class_ids[:, None]], 1).astype(np.float64))
    return files, preds, gts, sizes, list(det.info.names), det.info.imgsz


def report(model: str, data: str, out: Path, device: str = "cpu", imgsz: int | None = None, conf: float = 0.25,
           worst: int = 16) -> dict:
    """Score ``model`` on ``data``; write ``out/report.json``, ``out/report.md`` and ``out/worst.jpg``."""
    import cv2

    files, preds, gts, sizes, names, size = predict(model, data, device, imgsz)
    r = evaluate(preds, gts, nc=len(names), names=names)
    res = {"model": str(model), "data": str(data), "imgsz": size, "overall": r,
           "by_band": by_band(preds, gts, sizes, names), "confusion": confusion(preds, gts, sizes, names, conf)}
    out.mkdir(parents=True, exist_ok=True)
    errs = np.asarray(res["confusion"].pop("errors_per_image"))
    order = [int(i) for i in np.argsort(-errs, kind="stable")[:worst] if errs[i] > 0]
    res["worst"] = [{"image": files[i].name, "errors": int(errs[i])} for i in order]
    if order:
        draw_grid([cv2.imread(str(files[i])) for i in order], [preds[i] for i in order], [gts[i] for i in order],
                  names, out / "worst.jpg", conf=conf)
    (out / "report.json").write_text(json.dumps(res, indent=2))
    (out / "report.md").write_text(to_markdown(res))
    return res


def to_markdown(res: dict) -> str:
    r, c = res["overall"], res["confusion"]
    lines = [f"model `{res['model']}` at {res['imgsz']} on `{res['data']}`: {r['n_images']} images, {r['n_gt']} objects",
             "", f"**mAP50 {r['map50']:.4f}, mAP50-95 {r['map']:.4f}** (P {r['precision']:.3f} R {r['recall']:.3f} "
             f"at conf {r['conf_best_f1']:.3f})", "", "| class | AP50 | AP50-95 | objects |", "|---|---|---|---|"]
    lines += [f"| {n} | {v['ap50']:.4f} | {v['ap']:.4f} | {v['n_gt']} |" for n, v in r["per_class"].items()]
    lines += ["", f"| area band | mAP50 | mAP50-95 | objects | recall at conf {c['conf']} |", "|---|---|---|---|---|"]
    for band, v in res["by_band"].items():
        rb = c["recall_by_band"][band]
        rec = "-" if rb["recall"] is None else f"{rb['recall']:.3f} ({rb['found']}/{rb['n']})"
        ap = "-" if v["n_gt"] == 0 else f"{v['map50']:.4f} | {v['map']:.4f}"
        lines.append(f"| {band} | {ap} | {v['n_gt']} | {rec} |" if v["n_gt"] else f"| {band} | - | - | 0 | - |")
    cols = list(next(iter(c["matrix"].values())))
    lines += ["", f"Confusion at conf {c['conf']} (rows: truth; IoU >= 0.5, class-agnostic matching): page/photo "
              f"confusion **{100 * c['page_photo_confusion']:.1f} %** of objects; false positives "
              f"{c['false_positives']}", "", "| truth \\ predicted | " + " | ".join(cols) + " |",
              "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(str(v) for v in vals.values()) + " |" for row, vals in c["matrix"].items()]
    return "\n".join(lines) + "\n"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet data report", description="per-class, per-size-band and "
                                "confusion report of a model on a labelled folder, with a worst-failure grid")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, report.md, worst.jpg")
    p.add_argument("--device", default="cpu")
    p.add_argument("--imgsz", type=int)
    p.add_argument("--conf", type=float, default=0.25, help="threshold of the confusion matrix and recall")
    return p


def main(argv=None) -> int:
    a = make_parser().parse_args(argv)
    res = report(a.model, a.data, a.out, a.device, a.imgsz, a.conf)
    print(to_markdown(res))
    return 0
