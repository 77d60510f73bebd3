"""Synthetic data generator, label files and the training dataset."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from polydet.data import synth
from polydet.data.camera import hidden_fraction, inter_area, order_corners_np, poly_area
from polydet.data.dataset import AugConfig, PolygonDataset, collate, letterbox
from polydet.data.labels import read_labels, write_labels
from polydet.data.synth import SynthConfig, render_sample

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402
from shapely.ops import unary_union  # noqa: E402

# Smaller images than the default (320-1600) keep the property checks fast; geometry is the same.
FAST = SynthConfig(long_side=(320, 560))
N_PROPS = 48


@pytest.fixture(scope="module")
def samples():
    return [render_sample(np.random.default_rng([11, i]), FAST) for i in range(N_PROPS)]


def test_same_seed_same_bytes():
    a = render_sample(np.random.default_rng([5, 3]), FAST)
    b = render_sample(np.random.default_rng([5, 3]), FAST)
    c = render_sample(np.random.default_rng([5, 4]), FAST)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[0].shape != c[0].shape or a[0].tobytes() != c[0].tobytes()


def test_image_and_label_types(samples):
    for img, lab in samples:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        h, w = img.shape[:2]
        assert 320 <= max(h, w) <= 561 and 0.5 - 1e-3 <= w / h <= 2 + 1e-3
        assert lab.dtype == np.float32 and lab.ndim == 2 and lab.shape[1] == 9
        assert 0 <= len(lab) <= 3
        assert set(np.unique(lab[:, 0]).tolist()) <= {0.0, 1.0}


def test_counts_cover_0_to_3_and_both_classes(samples):
    counts = {len(lab) for _, lab in samples}
    assert counts == {0, 1, 2, 3}
    classes = np.concatenate([lab[:, 0] for _, lab in samples])
    assert (classes == 0).any() and (classes == 1).any()


def test_corners_inside_and_area_range(samples):
    for img, lab in samples:
        h, w = img.shape[:2]
        q = lab[:, 1:].reshape(-1, 4, 2)
        assert (q[..., 0] >= 0).all() and (q[..., 0] <= w).all()
        assert (q[..., 1] >= 0).all() and (q[..., 1] <= h).all()
        for quad in q:
            frac = Polygon(quad).area / (w * h)
            assert 0.03 * (1 - 1e-4) <= frac <= 0.8 * (1 + 1e-4)
            assert Polygon(quad).is_valid  # simple (not self-intersecting) in canonical order


def test_canonical_corner_order(samples):
    quads = np.concatenate([lab[:, 1:].reshape(-1, 4, 2) for _, lab in samples])
    assert len(quads) > 40
    np.testing.assert_array_equal(order_corners_np(quads), quads)
    y, x = quads[..., 1], quads[..., 0]
    assert (np.minimum(y[:, 2], y[:, 3]) >= np.maximum(y[:, 0], y[:, 1])).all()
    assert (x[:, 0] <= x[:, 1]).all() and (x[:, 3] <= x[:, 2]).all()


def test_order_corners_rule_on_known_quads():
    # A square turned ~56 deg: the two highest corners (smallest y) left to right, then the two lowest
    # right to left.
    d = np.array([[32, 42], [50, 30], [62, 48], [44, 60]], float)
    np.testing.assert_array_equal(order_corners_np(d[[2, 0, 3, 1]]), d)
    r = np.array([[0, 0], [10, 0], [10, 5], [0, 5]], float)
    np.testing.assert_array_equal(order_corners_np(r[[3, 1, 0, 2]]), r)


def test_order_corners_matches_ops_version():
    ops = pytest.importorskip("polydet.ops.polygon")
    if not hasattr(ops, "order_corners"):
        pytest.skip("polydet.ops.polygon.order_corners not available")
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.uniform(0, 100, (300, 4, 2)), rng.integers(0, 5, (300, 4, 2)).astype(float)])  # ties
    got = ops.order_corners(torch.from_numpy(q)).numpy()
    np.testing.assert_array_equal(got, order_corners_np(q))
    assert order_corners_np(q[:0]).shape == (0, 4, 2)


def test_occlusion_bound(samples):
    # Labels come in drawing order: each object may be covered only by the ones after it.
    checked = 0
    for _, lab in samples:
        polys = [Polygon(q) for q in lab[:, 1:].reshape(-1, 4, 2)]
        for i, p in enumerate(polys):
            above = polys[i + 1:]
            if above:
                hidden = p.intersection(unary_union(above)).area / p.area
                assert hidden <= 0.3 + 1e-6
                ours = hidden_fraction(lab[i, 1:].reshape(4, 2).astype(float),
                                       [lab[j, 1:].reshape(4, 2).astype(float) for j in range(i + 1, len(polys))])
                assert ours == pytest.approx(hidden, abs=1e-4)
                checked += 1
            for q in polys[i + 1:]:
                assert p.intersection(q).area <= 0.3 * min(p.area, q.area) + 1e-6
    assert checked > 5


def test_overlap_is_generated():
    # Over enough samples, some objects really are partly covered (the bound is not vacuous).
    cfg = SynthConfig(long_side=(320, 400), n_objects_p=(0, 0, 0, 1))
    worst = 0.0
    for i in range(12):
        q = synth.place_objects(np.random.default_rng([2, i]), 400, 300, cfg)
        quads = [o[2] for o in q]
        for k in range(len(quads) - 1):
            worst = max(worst, hidden_fraction(quads[k], quads[k + 1:]))
    assert 0.02 < worst <= 0.3


def test_label_file_round_trip(tmp_path):
    lab = np.array([[0, 10.25, 20.5, 300.125, 21, 299.9, 250.75, 11, 249],
                    [1, 0, 0, 640, 0, 640, 480, 0, 480]], np.float32)
    p = tmp_path / "a.txt"
    write_labels(p, lab, 640, 480)
    lines = p.read_text().splitlines()
    assert lines[1] == "1 0.000000 0.000000 1.000000 0.000000 1.000000 1.000000 0.000000 1.000000"
    back = read_labels(p, 640, 480)
    assert back.dtype == np.float32 and back.shape == (2, 9)
    np.testing.assert_allclose(back, lab, atol=640 * 5e-7)
    write_labels(tmp_path / "b.txt", back, 640, 480)
    assert (tmp_path / "b.txt").read_text() == p.read_text()  # a fixed point after one round
    write_labels(tmp_path / "e.txt", np.zeros((0, 9)), 10, 10)
    assert (tmp_path / "e.txt").read_text() == ""
    assert read_labels(tmp_path / "e.txt", 10, 10).shape == (0, 9)
    (tmp_path / "bad.txt").write_text("0 0.1 0.2\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_labels(tmp_path / "bad.txt", 10, 10)


def test_config_rejects_unknown_keys():
    d = SynthConfig().to_dict()
    assert SynthConfig.from_dict(json.loads(json.dumps(d))) == SynthConfig()
    with pytest.raises(ValueError, match="bogus"):
        SynthConfig.from_dict({**d, "bogus": 1})


def test_synth_dataset_items():
    ds = PolygonDataset("synth", 224, augment=True, n=6, seed=1, cfg=FAST, warm=False)
    assert len(ds) == 6
    img, t = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 224, 224)
    assert t.dtype == torch.float32 and t.ndim == 2 and t.shape[1] == 9
    img2, t2 = ds[0]
    assert torch.equal(img, img2) and torch.equal(t, t2)  # deterministic per (seed, index)
    imgs, targets = collate([ds[i] for i in range(4)])
    assert imgs.shape == (4, 3, 224, 224) and imgs.dtype == torch.uint8
    assert targets.shape[1] == 10 and targets.dtype == torch.float32
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0, 3.0}
    with pytest.raises(IndexError):
        ds[6]


def test_letterbox_matches_ops():
    ops = pytest.importorskip("polydet.ops.letterbox")
    img = np.random.default_rng(0).integers(0, 255, (300, 517, 3), dtype=np.uint8)
    ours, r, pad = letterbox(img, 224)
    ref, lb = ops.letterbox(img, 224, stride=32, auto=False)
    np.testing.assert_array_equal(ours, ref)
    assert r == pytest.approx(lb.scale) and pad == tuple(int(v) for v in lb.pad)


def _quad_dir(tmp_path, quad, w=400, h=300):
    img = np.full((h, w, 3), 20, np.uint8)
    cv2.fillConvexPoly(img, np.round(np.asarray(quad) * 16 - 8).astype(np.int32), (240, 240, 240), cv2.LINE_AA, 4)
    cv2.imwrite(str(tmp_path / "q.png"), img)
    write_labels(tmp_path / "q.txt", np.array([[1, *np.asarray(quad).reshape(-1)]]), w, h)


def _mask_iou(img_chw: torch.Tensor, quad: np.ndarray) -> float:
    bright = img_chw.numpy().max(0) > 165  # quad 240, background 20 and padding 114, +-20 % value jitter
    ref = np.zeros(bright.shape, np.uint8)
    cv2.fillConvexPoly(ref, np.round(quad * 16 - 8).astype(np.int32), 1, cv2.LINE_8, 4)
    ref = ref.astype(bool)
    return (bright & ref).sum() / max((bright | ref).sum(), 1)


def test_augmentation_keeps_polygon(tmp_path):
    quad = np.array([[120, 60], [300, 90], [280, 240], [100, 210]], float)
    _quad_dir(tmp_path, quad)
    plain = PolygonDataset(tmp_path, 256, augment=False)
    img, t = plain[0]
    assert _mask_iou(img, t[0, 1:].numpy().reshape(4, 2)) > 0.95
    aug = AugConfig(degrees=180, translate=0.1, scale=(0.7, 1.2), shear=5, fliplr=0.5, flipud=0.5,
                    hsv=(0.015, 0.5, 0.2))
    checked = 0
    for seed in range(12):
        ds = PolygonDataset(tmp_path, 256, augment=True, seed=seed, aug=aug)
        img, t = ds[0]
        if len(t) == 0:
            continue
        q = t[0, 1:].numpy().reshape(4, 2)
        np.testing.assert_array_equal(order_corners_np(q), q)
        assert _mask_iou(img, q) > 0.9
        checked += 1
    assert checked >= 8


def test_drops_labels_that_leave_the_image(tmp_path):
    quad = np.array([[5, 5], [60, 5], [60, 50], [5, 50]], float)  # near the top-left corner
    _quad_dir(tmp_path, quad)
    aug = AugConfig(degrees=0, translate=0.3, scale=(1.0, 1.0), shear=0, fliplr=0, flipud=0, min_inside=0.6)
    kept = [len(PolygonDataset(tmp_path, 128, augment=True, seed=s, aug=aug)[0][1]) for s in range(30)]
    assert 0 in kept and 1 in kept


def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert synth.main([str(out), "--n", "5", "--seed", "3", "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == [f"{i:06d}.jpg" for i in range(5)] + ["preview.jpg"]
    assert len(list(out.glob("*.txt"))) == 5
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n"] == 5 and meta["seed"] == 3 and meta["version"] == synth.GENERATOR_VERSION
    assert SynthConfig.from_dict(meta["cfg"]) == SynthConfig()
    for i in range(5):
        img = cv2.imread(str(out / f"{i:06d}.jpg"))
        lab = read_labels(out / f"{i:06d}.txt", img.shape[1], img.shape[0])
        ref_img, ref_lab = render_sample(np.random.default_rng([3, i]))
        assert img.shape == ref_img.shape
        np.testing.assert_allclose(lab, ref_lab, atol=max(img.shape) * 1e-6)
    assert cv2.imread(str(out / "preview.jpg")) is not None
    assert "wrote 5 images" in capsys.readouterr().out
    ds = PolygonDataset(out, 160, augment=False)
    assert len(ds) == 5 and ds[0][0].shape == (3, 160, 160)


def test_workers_do_not_change_output(tmp_path):
    # Two workers run through the CLI in a fresh interpreter, with a time limit: a worker pool started
    # from a pytest process that earlier tests left with threads and spawned helpers hung here once,
    # and a hang must fail the test, not stall the whole suite.
    import subprocess
    import sys

    synth.write_dataset(tmp_path / "a", 4, 9, SynthConfig(), workers=1, progress=False, preview=0)
    subprocess.run([sys.executable, "-m", "polydet.cli", "data", "synth", str(tmp_path / "b"), "--n", "4",
                    "--seed", "9", "--workers", "2", "--no-progress"], check=True, timeout=300,
                   capture_output=True)
    for i in range(4):
        for ext in ("jpg", "txt"):
            assert (tmp_path / "a" / f"{i:06d}.{ext}").read_bytes() == (tmp_path / "b" / f"{i:06d}.{ext}").read_bytes()


def test_convex_clipping_matches_shapely():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a, b = (np.asarray(Polygon(rng.uniform(0, 50, (8, 2))).convex_hull.exterior.coords)[:-1] for _ in range(2))
        assert poly_area(a) == pytest.approx(Polygon(a).area)
        assert inter_area(a, b) == pytest.approx(Polygon(a).intersection(Polygon(b)).area, abs=1e-6)
        occ = [np.asarray(Polygon(rng.uniform(0, 50, (6, 2))).convex_hull.exterior.coords)[:-1] for _ in range(3)]
        ref = Polygon(a).intersection(unary_union([Polygon(o) for o in occ])).area / Polygon(a).area
        assert hidden_fraction(a, occ) == pytest.approx(ref, abs=1e-6)


def test_warp_puts_texture_exactly_on_the_label_quad():
    # Coverage of a white texture warped onto black must have the quad's area and centroid: the label
    # is the object's outer edge to a fraction of a pixel, not off by the half-pixel centre convention.
    quad = np.array([[40.3, 30.7], [170.2, 52.9], [150.6, 140.1], [25.4, 118.8]])
    img = np.zeros((180, 200, 3), np.uint8)
    synth._warp_into(img, np.full((90, 120, 3), 255, np.uint8), None, quad)
    cov = img[..., 0].astype(np.float64) / 255
    poly = Polygon(quad)
    assert cov.sum() == pytest.approx(poly.area, rel=0.01)
    ys, xs = np.mgrid[0:180, 0:200] + 0.5  # pixel centres in label (pixel-edge) coordinates
    cx, cy = (cov * xs).sum() / cov.sum(), (cov * ys).sum() / cov.sum()
    assert abs(cx - poly.centroid.x) < 0.15 and abs(cy - poly.centroid.y) < 0.15


def test_synth_in_loader_workers_matches_main_process():
    ds = PolygonDataset("synth", 160, augment=True, n=4, seed=7, cfg=FAST, warm=False)
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    # Late in a long pytest process, passing tensors by file descriptor failed once with EAGAIN on the
    # resource sharer's socket; the file_system strategy avoids that channel (restored afterwards).
    old = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        imgs, targets = zip(*dl)
    finally:
        torch.multiprocessing.set_sharing_strategy(old)
    ref_imgs, ref_t = collate([ds[i] for i in range(4)])
    assert torch.equal(torch.cat(imgs), ref_imgs)
    t = torch.cat([tt + torch.tensor([2.0 * k] + [0.0] * 9) for k, tt in enumerate(targets)])
    assert torch.equal(t, ref_t)


def test_forked_children_start_with_one_opencv_thread():
    # The at-fork hook stops OpenCV's thread pool in the parent around fork (a pool mutex held at
    # fork time hangs the child) and gives the parent its thread count back afterwards.
    import os

    from polydet.data.dataset import _cv2_fork_safe

    _cv2_fork_safe()
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if cv2.getNumThreads() == 1 else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert cv2.getNumThreads() == 2
    finally:
        cv2.setNumThreads(before)
