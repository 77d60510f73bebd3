"""Training code stays alive: loss targets and values, a tiny CPU run, checkpoints and resume."""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from polydet.model import PolygonYOLO, load_model
from polydet.ops.polygon import order_corners
from polydet.train import LossHyp, PolygonLoss, TrainConfig, order_penalty, train
from polydet.train.trainer import config_from_args, make_parser

# A diamond (rotated square): corners right, bottom, left, top in the label; its axis-aligned box is
# 20 x 20 px centred at (45, 45).
DIAMOND = [55, 45, 45, 55, 35, 45, 45, 35]


def maps(imgsz: int, b: int = 1, nc: int = 2) -> list[torch.Tensor]:
    """Zero raw head maps shaped like the model's training output at ``imgsz``."""
    return [torch.zeros(b, 3, imgsz // s, imgsz // s, 9 + nc) for s in (8, 16, 32)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PolygonYOLO("polygon_yolov5n", nc=2).train()


def test_assignment_picks_expected_cells(model):
    loss = PolygonLoss(model, imgsz=128)
    t = torch.tensor([[0, 1, *DIAMOND]], dtype=torch.float32)
    tcls, tbox, idx = loss.build_targets(maps(128), t)
    cells = [sorted({(int(a), int(gj), int(gi)) for _, a, gj, gi in zip(*level)}) for level in idx]
    # P3 (stride 8, 16x16): centre 5.625 -> own cell (5,5) plus right (6,5) and lower (5,6) neighbours;
    # wh 20x20 is within 4x of all three P3 anchors (10x13, 16x30, 33x23).
    assert cells[0] == sorted((a, gj, gi) for a in range(3) for gj, gi in ((5, 5), (5, 6), (6, 5)))
    # P4 (stride 16, 8x8): centre 2.8125 -> (2,2), right (2,3) and lower (3,2); anchor 59x119 is > 4x.
    assert cells[1] == sorted((a, gj, gi) for a in range(2) for gj, gi in ((2, 2), (2, 3), (3, 2)))
    assert cells[2] == []  # P5 anchors (>= 90 px) are all more than 4x the object
    assert all(int(c) == 1 for c in tcls[0])
    # regression target: corners in canonical order, / stride, minus the cell's top-left
    canon = order_corners(torch.tensor(DIAMOND, dtype=torch.float32).view(1, 4, 2)).view(8)
    b, a, gj, gi = idx[0]
    k = int(((gi == 5) & (gj == 5)).nonzero()[0])
    torch.testing.assert_close(tbox[0][k], canon / 8 - 5)
    k = int(((gi == 6) & (gj == 5)).nonzero()[0])
    torch.testing.assert_close(tbox[0][k], canon / 8 - torch.tensor([6.0, 5.0]).repeat(4))


def test_perfect_prediction_has_near_zero_box_loss(model):
    loss = PolygonLoss(model, imgsz=128)
    t = torch.tensor([[0, 0, *DIAMOND]], dtype=torch.float32)
    preds = maps(128)
    for p in preds:
        p[..., 8] = -20.0  # no object anywhere ...
        p[..., 9:] = -20.0
    _, tbox, idx = loss.build_targets(preds, t)
    for p, tb, (b, a, gj, gi) in zip(preds, tbox, idx):
        p[b, a, gj, gi, :8] = tb  # ... except exact corners, confident objectness and class at assigned cells
        p[b, a, gj, gi, 8] = 20.0
        p[b, a, gj, gi, 9] = 20.0
    _, items = loss(preds, t)
    lbox, lobj, lcls, _ = items.tolist()
    assert lbox < 1e-9
    assert lobj < 1e-6 and lcls < 1e-6  # IoU-aware target: IoU is 1 for exact corners
    # moving one x by a grid cell costs (at least) its Smooth-L1 share: gain * (1 - beta/2) / (8 n)
    b, a, gj, gi = idx[0]
    preds[0][b[0], a[0], gj[0], gi[0], 0] += 1.0
    h = LossHyp()
    assert loss(preds, t)[1][0] >= h.box * (1 - h.beta / 2) / (8 * len(b)) * (1 - 1e-5)


def rotated_rects(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ang = torch.rand(n, generator=g) * 2 * math.pi
    w, h = torch.rand(n, generator=g) * 50 + 5, torch.rand(n, generator=g) * 50 + 5
    corners = torch.stack((torch.stack((-w, -h), 1), torch.stack((w, -h), 1), torch.stack((w, h), 1),
                           torch.stack((-w, h), 1)), 1) / 2
    rot = torch.stack((torch.stack((ang.cos(), -ang.sin()), 1), torch.stack((ang.sin(), ang.cos()), 1)), 1)
    return corners @ rot.transpose(1, 2) + 100


def test_paired_iou_matches_polygon_iou():
    from polydet.ops.polygon import polygon_iou
    from polydet.train import paired_polygon_iou

    a, b = rotated_rects(50, 1), rotated_rects(50, 2)
    b[:25] = a[:25] + 3  # half of the pairs overlap
    torch.testing.assert_close(paired_polygon_iou(a, b), polygon_iou(a, b).diagonal())
    assert paired_polygon_iou(a[:0], b[:0]).shape == (0,)


def test_order_penalty():
    # the seeds' canonical order of any rectangle satisfies every constraint of the penalty
    ordered = order_corners(rotated_rects(64)).view(64, 8)
    assert order_penalty(ordered) == 0.0
    swapped = ordered.view(64, 4, 2)[:, [2, 3, 0, 1]].reshape(64, 8)  # bottom corners first
    assert order_penalty(swapped) > 0


def test_no_targets_only_objectness(model):
    loss = PolygonLoss(model, imgsz=64)
    total, items = loss(maps(64, b=2), torch.zeros(0, 10))
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    assert math.isfinite(float(total))


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    m = PolygonYOLO("polygon_yolov5n", nc=2).train()
    loss = PolygonLoss(m, LossHyp(), imgsz=64)
    imgs, targets = make_batch(np.random.default_rng(0), 2, 64)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    first = None
    for _ in range(8):
        total, items = loss(m(imgs.float() / 255), targets)
        opt.zero_grad()
        total.backward()
        opt.step()
        first = first if first is not None else float(items[3])
    assert math.isfinite(float(items[3]))
    assert float(items[3]) < 0.7 * first


# ------------------------------------------------------------------ a tiny stand-in dataset


def render(rng: np.random.Generator, imgsz: int):
    """Noise background with 1-2 random convex quads (class 0 light, class 1 saturated)."""
    import cv2

    img = rng.integers(0, 120, (imgsz, imgsz, 3), dtype=np.uint8)
    labels = []
    for _ in range(rng.integers(1, 3)):
        c = int(rng.integers(0, 2))
        ctr = rng.uniform(0.3, 0.7, 2) * imgsz
        r = rng.uniform(0.12, 0.3) * imgsz
        ang = rng.uniform(0, 2 * np.pi) + np.array([0, 0.5, 1, 1.5]) * np.pi + rng.uniform(-0.2, 0.2, 4)
        q = np.stack((ctr[0] + r * np.cos(ang), ctr[1] + r * np.sin(ang)), 1).clip(0, imgsz - 1)
        color = (230, 230, 230) if c == 0 else tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.fillConvexPoly(img, np.round(q).astype(np.int32), color)
        labels.append([c, *q.ravel()])
    return torch.from_numpy(img).permute(2, 0, 1).contiguous(), torch.tensor(labels, dtype=torch.float32)


def make_batch(rng, b, imgsz):
    items = [render(rng, imgsz) for _ in range(b)]
    return StandIn.collate(items)


class StandIn:
    """Module-like stand-in for polydet.data.dataset with the contract's interface."""

    class PolygonDataset(torch.utils.data.Dataset):
        def __init__(self, source, imgsz, augment=False, n=16, seed=0):
            self.imgsz, self.n, self.seed = imgsz, n, seed
            self.files = None if source == "synth" else sorted(Path(source).glob("*.png"))
            if self.files is not None:
                self.n = len(self.files)

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            if self.files is None:
                return render(np.random.default_rng([self.seed, i]), self.imgsz)
            import cv2

            img = cv2.imread(str(self.files[i]))[..., ::-1]  # the stand-in's files are already imgsz square
            lab = np.loadtxt(self.files[i].with_suffix(".txt"), ndmin=2).astype(np.float32)
            lab[:, 1:] *= self.imgsz
            return torch.from_numpy(img.copy()).permute(2, 0, 1).contiguous(), torch.from_numpy(lab)

    @staticmethod
    def collate(batch):
        imgs = torch.stack([b[0] for b in batch])
        t = [torch.cat((torch.full((len(b[1]), 1), float(i)), b[1]), 1) for i, b in enumerate(batch)]
        return imgs, torch.cat(t) if t else torch.zeros(0, 10)


@pytest.fixture
def stand_in_data(monkeypatch):
    """The contract's dataset interface backed by the stand-in (fast and independent of the generator)."""
    mod = types.ModuleType("polydet.data.dataset")
    mod.PolygonDataset, mod.collate = StandIn.PolygonDataset, StandIn.collate
    monkeypatch.setitem(__import__("sys").modules, "polydet.data.dataset", mod)


def tiny_cfg(tmp_path, **kw) -> TrainConfig:
    d = dict(imgsz=64, epochs=3, epoch_size=8, batch=4, workers=0, warmup_epochs=0.5, val_every=1,
             out=str(tmp_path / "run"), device="cpu", seed=0)
    d.update(kw)
    return TrainConfig(**d)


def test_tiny_training_run_checkpoint_and_resume(tmp_path, stand_in_data):
    cfg = tiny_cfg(tmp_path)
    # budget ~0: stops after the first iteration and saves a resumable last.pt
    r = train(TrainConfig(**{**cfg.__dict__, "time_budget_min": 1e-6}))
    assert not r["done"] and r["it"] == 1
    r = train(config_from_args(make_parser().parse_args(["--out", cfg.out, "--resume", "--workers", "0",
                                                          "--device", "cpu"])), resume=True)
    assert r["done"] and r["it"] == r["total"] == 6
    assert [h["it"] for h in r["history"]] == [1, 2, 4, 6]
    assert all(math.isfinite(h[k]) for h in r["history"] for k in ("box", "obj", "cls"))
    for name in ("last.pt", "best.pt"):
        m, info = load_model(tmp_path / "run" / name)
        assert info.names == ["page", "photo"] and info.imgsz == 64
        with torch.no_grad():
            assert m(torch.rand(1, 3, 64, 64)).shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 11)
    ck = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ck["train_state"]["it"] == 6 and ck["train_state"]["config"]["imgsz"] == 64


def test_validation_and_half_weights(tmp_path, stand_in_data):
    import cv2

    val = tmp_path / "val"
    val.mkdir()
    rng = np.random.default_rng(999)
    for i in range(3):
        img, lab = render(rng, 64)
        cv2.imwrite(str(val / f"{i}.png"), img.permute(1, 2, 0).numpy()[..., ::-1])
        lab = lab.numpy().copy()
        lab[:, 1:] /= 64
        (val / f"{i}.txt").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in lab))
    r = train(tiny_cfg(tmp_path, epochs=2, val=str(val), save_half=True))
    assert [h["it"] for h in r["history"]] == [2, 4] and all(0 <= h["map"] <= h["map50"] <= 1 for h in r["history"])
    best = max(0.1 * h["map50"] + 0.9 * h["map"] for h in r["history"])
    assert r["best_fitness"] == pytest.approx(best)
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ck["state_dict"]["det.m.0.weight"].dtype == torch.float16
    m, _ = load_model(tmp_path / "run" / "best.pt")
    assert m.det.m[0].weight.dtype == torch.float32


def test_seed_never_a_validation_seed():
    from polydet.train.loader import RESERVED_VAL_SEEDS, seed_for_epoch

    cfg = TrainConfig()
    assert not {seed_for_epoch(cfg, e) for e in range(2000)} & RESERVED_VAL_SEEDS
    assert seed_for_epoch(cfg, 0) != seed_for_epoch(cfg, 1)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_d4_transform_moves_corners_with_pixels(k, flip):
    from polydet.train.replay import d4_transform

    s = 8
    imgs = torch.zeros(1, 1, s, s)
    imgs[0, 0, 1, 5] = 1  # pixel row 1, col 5: its centre is (x, y) = (5.5, 1.5) in pixel-edge coordinates
    t = torch.tensor([[0, 1, 5.5, 1.5, 0, 0, s, 0, s, s]])  # + image corners (0,0), (s,0), (s,s)
    out, t2 = d4_transform(imgs, t, torch.tensor([k]), torch.tensor([flip]))
    r, c = (out[0, 0] == 1).nonzero()[0].tolist()
    assert t2[0, 2:4].tolist() == [c + 0.5, r + 0.5]
    moved = {tuple(p) for p in t2[0, 4:].view(3, 2).tolist()}
    assert len(moved) == 3 and moved <= {(0, 0), (s, 0), (s, s), (0, s)}  # image corners stay image corners
    assert t2[0, :2].tolist() == [0, 1]


def test_replay_buffer_keeps_targets_with_their_images():
    from polydet.train.replay import ReplayBuffer

    buf = ReplayBuffer(3, torch.Generator().manual_seed(0))
    for j in range(4):  # image value encodes (batch j, image i); one target per image with cls = value
        imgs = torch.stack([torch.full((1, 8, 8), 10 * j + i, dtype=torch.uint8) for i in range(2)])
        buf.push(imgs, torch.tensor([[i, 10 * j + i, 1, 1, 2, 1, 2, 2, 1, 2] for i in range(2)], dtype=torch.float32))
    assert len(buf.imgs) == 3  # the oldest batch left
    imgs, t = buf.sample(4)
    assert imgs.shape == (4, 1, 8, 8) and t.shape == (4, 10)
    for row in t:
        assert imgs[int(row[0]), 0, 0, 0] == row[1]  # each target still belongs to its image
    assert set(t[:, 1].long().tolist()) <= {10, 11, 20, 21, 30, 31}


def test_training_with_replay(tmp_path, stand_in_data):
    r = train(tiny_cfg(tmp_path, epochs=1, reuse=3, replay_batches=2))
    assert r["done"] and r["total"] == 2 * 3
    assert load_model(tmp_path / "run" / "last.pt")[1].imgsz == 64


def test_multiscale_and_init(tmp_path, stand_in_data):
    first = train(tiny_cfg(tmp_path, epochs=1))
    cfg = tiny_cfg(tmp_path, epochs=1, multiscale=(64, 96), init=first["last"], out=str(tmp_path / "ms"))
    r = train(cfg)
    assert r["done"] and r["total"] == 2
    m, info = load_model(tmp_path / "ms" / "last.pt")
    assert info.imgsz == 64  # the validation / declared size, not the render size


def test_resize_scales_corners():
    from polydet.train.trainer import _resize

    imgs = torch.zeros(1, 1, 8, 8)
    imgs[0, 0, 3:5, 2:6] = 1  # a block from x 2..6, y 3..5 (pixel edges), centred away from the borders
    t = torch.tensor([[0, 0, 2, 3, 6, 3, 6, 5, 2, 5.0]])
    small, t2 = _resize(imgs, t, 4)
    assert t2[0, 2:].tolist() == [1, 1.5, 3, 1.5, 3, 2.5, 1, 2.5]
    # the block's intensity centroid (pixel centres at k + 0.5) lands on the scaled corners' centre
    w = small[0, 0]
    cx = float((w.sum(0) * (torch.arange(4) + 0.5)).sum() / w.sum())
    cy = float((w.sum(1) * (torch.arange(4) + 0.5)).sum() / w.sum())
    assert (cx, cy) == (pytest.approx(2.0, abs=1e-5), pytest.approx(2.0, abs=1e-5))


def test_budget_stop_still_validates(tmp_path, stand_in_data):
    import cv2

    val = tmp_path / "val"
    val.mkdir()
    img, lab = render(np.random.default_rng(999), 64)
    cv2.imwrite(str(val / "0.png"), img.permute(1, 2, 0).numpy()[..., ::-1])
    lab = lab.numpy().copy()
    lab[:, 1:] /= 64
    (val / "0.txt").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in lab))
    # mid-epoch stop (val_every far away): the stopped weights are still validated and become best.pt
    r = train(tiny_cfg(tmp_path, val=str(val), val_every=100, time_budget_min=1e-6))
    assert not r["done"] and r["it"] == 1
    assert "map" in r["history"][-1] and (tmp_path / "run" / "best.pt").is_file()
