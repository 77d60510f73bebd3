"""Metric functions against hand-computed values (COCO 101-point AP, greedy matching, P/R at max F1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polydet.evaluate import ap_101, draw_grid, evaluate, main, match_predictions, read_labels


def sq(x, y, s=10.0):
    """Axis-aligned square quad, TL TR BR BL, as 8 numbers."""
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def pred(quad, score, cls=0):
    return [*quad, score, cls]


def gt(quad, cls=0):
    return [cls, *quad]


# 2 ground truths; ranked predictions TP (0.9), FP (0.8), TP (0.7):
# recall .5 .5 1, precision 1 .5 2/3 -> envelope 1 2/3 2/3;
# 101 points: r = 0 .. .50 (51 points) at 1, r = .51 .. 1 (50 points) at 2/3.
AP_TP_FP_TP = (51 * 1.0 + 50 * (2 / 3)) / 101


def test_ap_101_hand_computed():
    assert ap_101(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(AP_TP_FP_TP, abs=1e-12)
    assert ap_101(np.array([1.0]), np.array([1.0])) == 1.0
    # recall never passes .5: the 50 points above .5 count 0
    assert ap_101(np.array([0.5]), np.array([1.0])) == pytest.approx(51 / 101, abs=1e-12)
    assert ap_101(np.array([]), np.array([])) == 0.0


def test_match_greedy_by_score_and_class():
    g = np.array([gt(sq(0, 0)), gt(sq(100, 100))])
    p = np.array([
        pred(sq(100, 100), 0.7),  # TP (second gt)
        pred(sq(0, 0), 0.9),  # TP (first gt)
        pred(sq(1, 0), 0.8),  # duplicate of the first gt: FP, since the 0.9 one took it
        pred(sq(100, 100), 0.95, cls=1),  # right place, wrong class: FP
    ])
    c = match_predictions(p, g, [0.5])
    assert c[:, 0].tolist() == [True, True, False, False]


def test_match_iou_thresholds():
    # shifted by 2 of 10 px: IoU = 80 / 120 = 2/3 -> TP at .50 .. .65, FP from .70 on
    c = match_predictions(np.array([pred(sq(2, 0), 0.9)]), np.array([gt(sq(0, 0))]))
    assert c[0].tolist() == [True, True, True, True, False, False, False, False, False, False]


def test_evaluate_tp_fp_tp_exact():
    gts = [np.array([gt(sq(0, 0))]), np.array([gt(sq(50, 50))])]
    preds = [np.array([pred(sq(0, 0), 0.9), pred(sq(200, 200), 0.8)]), np.array([pred(sq(50, 50), 0.7)])]
    r = evaluate(preds, gts, names=["page", "photo"])
    assert r["map50"] == pytest.approx(AP_TP_FP_TP, abs=1e-12)
    assert r["map"] == pytest.approx(AP_TP_FP_TP, abs=1e-12)  # perfect quads: same at every threshold
    assert r["per_class"]["page"]["ap50"] == pytest.approx(AP_TP_FP_TP, abs=1e-12)
    assert math.isnan(r["per_class"]["photo"]["ap50"])  # no ground truth: left out of the mean
    # max F1: keeping all three (P 2/3, R 1, F1 .8) beats keeping one (P 1, R .5, F1 2/3)
    assert (r["precision"], r["recall"]) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert r["conf_best_f1"] <= 0.7
    assert r["n_gt"] == 2 and r["n_images"] == 2


def test_evaluate_per_class_mean():
    # class 0 perfect (AP 1); class 1 two gts, one found (AP 51/101)
    gts = [np.array([gt(sq(0, 0), 0), gt(sq(30, 0), 1), gt(sq(60, 0), 1)])]
    preds = [np.array([pred(sq(0, 0), 0.9, 0), pred(sq(30, 0), 0.8, 1)])]
    r = evaluate(preds, gts, nc=2)
    assert r["per_class"]["0"]["ap50"] == 1.0
    assert r["per_class"]["1"]["ap50"] == pytest.approx(51 / 101, abs=1e-12)
    assert r["map50"] == pytest.approx((1 + 51 / 101) / 2, abs=1e-12)


def test_evaluate_iou_sensitivity():
    # IoU 2/3 -> AP 1 at .50 .. .65 (4 thresholds), 0 at .70 .. .95 -> mAP50-95 = .4
    r = evaluate([np.array([pred(sq(2, 0), 0.9)])], [np.array([gt(sq(0, 0))])], nc=1)
    assert r["map50"] == 1.0
    assert r["map"] == pytest.approx(0.4, abs=1e-12)


def test_evaluate_empty_cases():
    # gts but no predictions: AP 0, recall 0
    r = evaluate([np.zeros((0, 10))], [np.array([gt(sq(0, 0))])], nc=2)
    assert r["map50"] == 0.0 and r["map"] == 0.0 and r["recall"] == 0.0
    # predictions but no ground truth anywhere: undefined
    r = evaluate([np.array([pred(sq(0, 0), 0.9)])], [np.zeros((0, 9))], nc=2)
    assert math.isnan(r["map50"]) and math.isnan(r["map"])
    assert r["per_class"]["0"]["n_pred"] == 1
    # no images at all
    r = evaluate([], [], nc=2)
    assert math.isnan(r["map50"]) and r["n_images"] == 0
    with pytest.raises(ValueError):
        evaluate([np.zeros((0, 10))], [], nc=2)


def test_rotated_quads_match():
    # a diamond predicted exactly: TP at every threshold
    d = [50, 0, 100, 50, 50, 100, 0, 50]
    c = match_predictions(np.array([pred(d, 0.5)]), np.array([gt(d)]))
    assert c.all()


def test_read_labels_and_grid(tmp_path):
    import cv2

    (tmp_path / "a.txt").write_text("1 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n")
    lab = read_labels(tmp_path / "a.txt", 200, 100)
    np.testing.assert_allclose(lab, [[1, 20, 20, 100, 20, 100, 60, 20, 60]])
    assert read_labels(tmp_path / "missing.txt", 10, 10).shape == (0, 9)
    (tmp_path / "bad.txt").write_text("0 0.1 0.2\n")
    with pytest.raises(ValueError):
        read_labels(tmp_path / "bad.txt", 10, 10)
    img = np.zeros((100, 200, 3), np.uint8)
    out = tmp_path / "grid.jpg"
    draw_grid([img, img], [np.array([pred(sq(20, 20, 40), 0.9, 1)]), np.zeros((0, 10))], [lab, lab],
              ["page", "photo"], out, cols=2, cell=100)
    assert cv2.imread(str(out)).shape == (100, 200, 3)


def test_eval_cli_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--model", str(tmp_path / "x.pt"), "--data", str(tmp_path / "nope")])
