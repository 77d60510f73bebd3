"""Generator 2.0 (synth2, pagekinds, photokinds, negatives), the held-out builder and the report's
confusion / band logic. Fast: small images and a fake sources folder (no network)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import cv2
import numpy as np
import pytest

from polydet.data import negatives, pagekinds, photokinds, report, sources
from polydet.data.camera import order_corners_np, poly_area
from polydet.data.synth import SynthConfig, render_sample
from polydet.data.synth2 import PRESETS, preset

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402
from shapely.ops import unary_union  # noqa: E402

SMALL = dict(long_side=(320, 480))


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """Train / held-out photos (noise pictures) and pages (rendered text pages) in a sources folder."""
    from polydet.data.pages import render_page

    rng = np.random.default_rng(0)
    for split in ("train", "heldout"):
        (tmp_path / split / "photos").mkdir(parents=True)
        (tmp_path / split / "pages").mkdir(parents=True)
        for i in range(3):
            pic = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (320, 240), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(tmp_path / split / "photos" / f"{i}.jpg"), pic)
            cv2.imwrite(str(tmp_path / split / "pages" / f"{i}.jpg"), render_page(rng, 400, 283))
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [
        {"split": "heldout", "package": "pkg-a", "version": "1", "kind": "photos", "licences": ["CC0-1.0"]},
        {"split": "heldout", "package": "pkg-a", "version": "1", "kind": "photos", "licences": ["CC0-1.0"]},
        {"split": "train", "package": "pkg-b", "version": "2", "kind": "pages", "licences": ["GPL-2+"]}]}))
    monkeypatch.setenv(sources.SOURCES_ENV, str(tmp_path))
    return tmp_path


def test_generator_1_labels_unchanged():
    """The 1.0 recipe draws the same scenes as before generator 2.0 existed (golden digest of the labels
    of three scenes, computed with the code of the commit before it), so the fixed validation set holds."""
    h = hashlib.md5()
    for i in range(3):
        h.update(render_sample(np.random.default_rng([999, i]), SynthConfig(long_side=(320, 560)))[1].tobytes())
    assert h.hexdigest() == "14bb7003c177b03c0f2288528b7a0888"


@pytest.mark.parametrize("name", ["train", "heldout"])
def test_v2_samples_are_valid_and_deterministic(fake_sources, name):
    cfg = dataclasses.replace(preset(name), **SMALL)
    n_obj = 0
    for i in range(6):
        img, lab = render_sample(np.random.default_rng([3, i]), cfg)
        img2, lab2 = render_sample(np.random.default_rng([3, i]), cfg)
        assert img.tobytes() == img2.tobytes() and lab.tobytes() == lab2.tobytes()
        h, w = img.shape[:2]
        assert img.dtype == np.uint8 and 320 <= max(h, w) <= 480 and lab.shape[1] == 9
        quads = lab[:, 1:].reshape(-1, 4, 2)
        assert set(lab[:, 0].tolist()) <= {0.0, 1.0}
        assert np.array_equal(order_corners_np(quads), quads)
        assert (quads >= 0).all() and (quads[..., 0] <= w).all() and (quads[..., 1] <= h).all()
        assert all(poly_area(q) >= cfg.area[0] * w * h * 0.999 for q in quads)
        n_obj += len(lab)
    assert n_obj > 0


def test_training_preset_never_reads_heldout(fake_sources):
    from polydet.train.loader import synth_config

    assert PRESETS["train"].sources == "train" and PRESETS["heldout"].sources == "heldout"
    assert synth_config("train") is PRESETS["train"]
    with pytest.raises(ValueError, match="never train on it"):
        synth_config("heldout")
    with pytest.raises(ValueError, match="unknown generator preset"):
        preset("v3")


def test_v1_mix_override_changes_only_the_share(fake_sources):
    from polydet.train.loader import synth_config
    from polydet.train.trainer import config_from_args, make_parser

    heavy = synth_config("train", 0.5)
    assert heavy.v1_mix == 0.5 and PRESETS["train"].v1_mix == 0.25  # the preset itself is untouched
    assert heavy.sources == "train" and heavy.area == PRESETS["train"].area
    with pytest.raises(ValueError, match="within"):
        synth_config("train", 1.5)
    cfg = config_from_args(make_parser().parse_args(["--synth", "train", "--v1-mix", "0.4"]))
    assert cfg.v1_mix == 0.4 and cfg.synth == "train"


def test_occluders_hide_at_most_max_hidden():
    """Shapely is the oracle: every object stays <= 30 % covered by the objects above it plus the occluder."""
    drawn = 0
    for s in range(40):
        rng = np.random.default_rng(s)
        a = np.array([[40, 40], [200, 50], [190, 220], [50, 210]], float)
        b = a + rng.uniform(60, 140, 2)
        img = np.zeros((320, 360, 3), np.uint8)
        poly = negatives.occluders(rng, img, [a, b], 0.3)
        if poly is None:
            continue
        drawn += 1
        for k, q in enumerate([a, b]):
            above = [Polygon(p) for p in [a, b][k + 1:]] + [Polygon(poly)]
            assert Polygon(q).intersection(unary_union(above)).area <= 0.3 * Polygon(q).area + 1e-6
    assert drawn >= 10


def test_hard_negatives_draw_something_and_label_nothing():
    img = np.full((300, 400, 3), 128, np.uint8)
    negatives.hard_negatives(np.random.default_rng(1), img, max_n=2)
    assert int(np.abs(img.astype(int) - 128).sum()) > 0


def test_fit_onto_paper_keeps_ink_dark_and_turns_to_fit():
    page = np.full((400, 283, 3), 255, np.uint8)
    page[100:110, 40:240] = 0  # a line of "text"
    out = pagekinds.fit_onto_paper(np.random.default_rng(0), page, 200, 283)  # landscape target
    assert out.shape == (200, 283, 3)
    assert out.min() < 30 and np.median(out) > 180


def test_moire_changes_only_brightness_pattern():
    img = np.full((100, 120, 3), 120, np.uint8)
    out = photokinds.moire(np.random.default_rng(0), img, 0.3)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert 0 < np.abs(out.astype(int) - 120).max() <= 0.3 * 1.4 * 120 + 1


def _quad(x, y, s):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def test_confusion_and_band_recall_exact():
    names = ["page", "photo"]
    # image 100x100: a page (25 %) found as photo, a photo (4 %) missed, one false page
    gts = [np.array([[0, *_quad(0, 0, 50)], [1, *_quad(70, 70, 20)]], float)]
    preds = [np.array([[*_quad(0, 0, 50), 0.9, 1], [*_quad(60, 0, 30), 0.8, 0], [*_quad(70, 70, 20), 0.1, 1]], float)]
    c = report.confusion(preds, gts, [(100, 100)], names, conf=0.25)
    assert c["matrix"] == {"page": {"page": 0, "photo": 1, "missed": 0}, "photo": {"page": 0, "photo": 0, "missed": 1},
                           "background": {"page": 1, "photo": 0, "missed": 0}}
    assert c["page_photo_confusion"] == 0.5 and c["false_positives"] == 1 and c["errors_per_image"] == [3]
    assert c["recall_by_band"]["0.03-0.05"] == {"found": 0, "n": 1, "recall": 0.0}
    assert c["recall_by_band"]["0.10-0.30"] == {"found": 1, "n": 1, "recall": 1.0}
    b = report.by_band(preds, gts, [(100, 100)], names)
    assert b["0.03-0.05"]["n_gt"] == 1 and b["0.10-0.30"]["n_gt"] == 1 and b["0.00-0.03"]["n_gt"] == 0


def test_heldout_build_records_packages_and_refuses_training_seeds(fake_sources, tmp_path, monkeypatch):
    from polydet.data import heldout

    monkeypatch.setitem(PRESETS, "heldout", dataclasses.replace(PRESETS["heldout"], **SMALL))
    with pytest.raises(ValueError, match="reserved seeds"):
        heldout.build(tmp_path / "x", n=1, seed=1000, progress=False)
    meta = heldout.build(tmp_path / "ho", n=3, progress=False)
    assert [p["package"] for p in meta["sources"]] == ["pkg-a"] and meta["sources"][0]["files"] == 2
    assert meta["version"] == "2.0" and meta["seed"] == heldout.HELDOUT_SEED
    assert len(list((tmp_path / "ho").glob("0*.txt"))) == 3
