"""Synthetic main-area data: pages and photos/cards/screens on natural scenes, tilted in 3-D and seen
through a pinhole camera, with shadows, lighting, blur, noise and JPEG (the range of TASK.md).

``render_sample(rng, cfg) -> (img BGR uint8 (H, W, 3), labels float32 (K, 9) [cls, x1, y1, ..., x4, y4])``
with pixel corners in canonical order (TL, TR, BR, BL). ``write_dataset`` writes ``NAME.jpg`` + ``NAME.txt``
(normalised label lines), ``preview.jpg`` and ``dataset.json``; sample ``i`` always uses
``np.random.default_rng([seed, i])`` so the output does not depend on the number of workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .camera import hidden_fraction, inter_area, order_corners_np, poly_area, sample_quad
from .effects import camera_pipeline, drop_shadow
from .labels import write_labels
from .objects import clutter, page_texture, photo_texture
from .scenes import background
from .sources import using

GENERATOR_VERSION = "1.0"
NAMES = ("page", "photo")
# Common aspect ratios (w/h) of real sheets, prints, cards and screens; the rest is uniform in range.
_COMMON_ASPECTS = (1 / math.sqrt(2), 8.5 / 11, 2 / 3, 3 / 4, 1.0, 1.586, 16 / 9)


@dataclass
class SynthConfig:
    long_side: tuple[int, int] = (320, 1600)  # image long side (px), log-uniform: small images are common
    aspect: tuple[float, float] = (0.5, 2.0)  # image w/h
    n_objects_p: tuple[float, ...] = (0.08, 0.5, 0.27, 0.15)  # P(0, 1, 2, 3 objects); 8 % empty negatives
    photo_p: float = 0.45  # P(an object is a photo/card/screen rather than a page)
    area: tuple[float, float] = (0.03, 0.8)  # quad area / image area: half log-uniform, half uniform
    obj_aspect: tuple[float, float] = (0.5, 2.0)  # flat object's w/h before projection
    common_aspect_p: float = 0.5  # P(a standard A4/letter/4:3/16:9/card ratio) instead of uniform
    max_tilt: float = 35.0  # degrees around the x and y axes (in-plane rotation is always 0-360)
    fov: tuple[float, float] = (35.0, 90.0)  # camera field of view over the long side, degrees: tele to
    # ultra-wide; wide angles + close objects give the strongest perspective
    max_hidden: float = 0.3  # at most this fraction of an object may be covered by objects above it
    min_visible_px: float = 24.0  # reject quads whose shortest side would be shorter than this
    clutter_p: float = 0.35  # P(unlabelled pens/cups/slabs on the background)
    shadow_p: float = 0.6  # P(a soft drop shadow under an object)
    texture_scale: tuple[float, float] = (0.75, 1.2)  # object texture res / projected size (< 1: soft print)
    max_texture: int = 1100  # cap on rendered texture long side (px): speed; warping upsamples beyond
    light_gradient: float = 0.6  # max relative brightness change across the image
    color_cast: float = 0.08  # std of log per-channel gains (white balance / coloured light)
    contrast: float = 1.6  # contrast factor in [1/c, c], log-uniform
    brightness: float = 0.15  # additive brightness in [-b, b] x 255
    blur_sigma: float = 2.0  # Gaussian blur sigma up to this (70 % of images)
    noise_sigma: float = 8.0  # sensor noise std up to this (80 % of images), in 0-255 units
    jpeg_p: float = 0.9  # P(JPEG re-encode)
    jpeg_quality: tuple[int, int] = (35, 95)
    log_area_p: float = 0.5  # P(an object's area is drawn log-uniform, i.e. small-biased) vs uniform
    recipe: int = 1  # 1: generator 1.0 (pages/prints/cards/screens); 2: synth2's kinds, look-alikes, occluders
    sources: str = "pypi"  # pictures drawn from: "pypi" (1.0), "train" or "heldout" (polydet data sources)
    v1_mix: float = 0.0  # recipe 2: P(a sample is a 1.0 scene on the bundled pictures), keeps 1.0's range covered

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SynthConfig keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _image_size(rng, cfg: SynthConfig) -> tuple[int, int]:
    long = math.exp(rng.uniform(math.log(cfg.long_side[0]), math.log(cfg.long_side[1])))
    if rng.random() < 0.5:  # camera / phone frames, either orientation
        ar = float(rng.choice([4 / 3, 3 / 2, 16 / 9, 1.0]))
        ar = 1 / ar if rng.random() < 0.5 else ar
    else:
        ar = math.exp(rng.uniform(math.log(cfg.aspect[0]), math.log(cfg.aspect[1])))
    ar = min(max(ar, cfg.aspect[0]), cfg.aspect[1])
    w, h = (long, long / ar) if ar >= 1 else (long * ar, long)
    return int(round(w)), int(round(h))


def _obj_aspect(rng, cfg: SynthConfig) -> float:
    if rng.random() < cfg.common_aspect_p:
        a = float(rng.choice(_COMMON_ASPECTS))
        a = 1 / a if rng.random() < 0.5 else a
    else:
        a = math.exp(rng.uniform(math.log(cfg.obj_aspect[0]), math.log(cfg.obj_aspect[1])))
    return min(max(a, cfg.obj_aspect[0]), cfg.obj_aspect[1])


def _fits(quad: np.ndarray, placed: list[np.ndarray], cfg: SynthConfig) -> bool:
    """The new quad goes on top: every earlier object must stay at most ``max_hidden`` covered, and no
    pair may overlap more than ``max_hidden`` of the smaller one."""
    a = poly_area(quad)
    for i, q in enumerate(placed):
        if inter_area(quad, q) > cfg.max_hidden * min(a, poly_area(q)):
            return False
        if hidden_fraction(q, placed[i + 1:] + [quad]) > cfg.max_hidden:
            return False
    return True


def _min_side(q: np.ndarray) -> float:
    return float(np.min(np.linalg.norm(q - np.roll(q, -1, 0), axis=1)))


def place_objects(rng, w: int, h: int, cfg: SynthConfig) -> list[tuple[int, float, np.ndarray]]:
    """Sample up to 3 (class, aspect, quad) with texture-order corners, respecting the overlap bound."""
    k = int(rng.choice(len(cfg.n_objects_p), p=np.asarray(cfg.n_objects_p) / sum(cfg.n_objects_p)))
    out: list[tuple[int, float, np.ndarray]] = []
    hi = min(cfg.area[1], 1.3 / max(k, 1))  # several objects must share the frame
    for _ in range(k):
        for _try in range(12):
            cls = int(rng.random() < cfg.photo_p)
            aspect = _obj_aspect(rng, cfg)
            hi_k = max(hi, cfg.area[0] * 1.01)
            if rng.random() < cfg.log_area_p:  # log-uniform: many small objects
                frac = math.exp(rng.uniform(math.log(cfg.area[0]), math.log(hi_k)))
            else:  # uniform: as many large ones (a document filling the frame is the classic shot)
                frac = rng.uniform(cfg.area[0], hi_k)
            q = sample_quad(rng, w, h, aspect, frac, cfg.max_tilt, cfg.fov, cfg.area[0])
            if q is None or _min_side(q) < cfg.min_visible_px:
                continue
            if _fits(q, [o[2] for o in out], cfg):
                out.append((cls, aspect, q))
                break
    return out


def _warp_into(img: np.ndarray, tex: np.ndarray, alpha: np.ndarray | None, quad: np.ndarray) -> None:
    """Perspective-warp ``tex`` so its outer edges land on ``quad`` (pixel-edge coordinates) and
    composite it in place with anti-aliased edges; only the quad's bounding box is touched."""
    h, w = img.shape[:2]
    th, tw = tex.shape[:2]
    x0, y0 = np.floor(quad.min(0)).astype(int)
    x1, y1 = np.ceil(quad.max(0)).astype(int)
    x0, y0, x1, y1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    src = np.array([[-0.5, -0.5], [tw - 0.5, -0.5], [tw - 0.5, th - 0.5], [-0.5, th - 0.5]], np.float32)
    dst = (quad - [x0 + 0.5, y0 + 0.5]).astype(np.float32)  # cv2 puts pixel centres on integers
    m = cv2.getPerspectiveTransform(src, dst)
    size = (x1 - x0, y1 - y0)
    if max(th / max(size[1], 1), tw / max(size[0], 1)) > 1.6:  # strong minification: pre-filter
        tex = cv2.GaussianBlur(tex, (0, 0), 0.4 * max(th / size[1], tw / size[0]))
    warped = cv2.warpPerspective(tex, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = np.full((th, tw), 255, np.uint8) if alpha is None else alpha
    a = cv2.warpPerspective(mask, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = a.astype(np.float32) * (1 / 255)
    roi = img[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(warped, roi, a, 1 - a)


def render_sample(rng: np.random.Generator, cfg: SynthConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic photo and its labels (K, 9) [cls, x1, y1, ..., x4, y4] in pixels, canonical order."""
    cfg = cfg or SynthConfig()
    with using(cfg.sources):
        if cfg.recipe >= 2:
            from .synth2 import render_v2

            if cfg.v1_mix and rng.random() < cfg.v1_mix:
                with using("pypi"):
                    return _render_v1(rng, cfg)
            return render_v2(rng, cfg)
        return _render_v1(rng, cfg)


def _render_v1(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    w, h = _image_size(rng, cfg)
    img = background(rng, h, w)
    if rng.random() < cfg.clutter_p:
        clutter(rng, img)
    objs = place_objects(rng, w, h, cfg)
    light = rng.uniform(-1, 1, 2)  # one light direction per scene: shadows fall the same way
    for cls, aspect, quad in objs:
        proj = float(np.max(np.linalg.norm(quad - np.roll(quad, -1, 0), axis=1)))
        long = int(np.clip(proj * rng.uniform(*cfg.texture_scale), 32, cfg.max_texture))
        tw, th = (long, max(8, round(long / aspect))) if aspect >= 1 else (max(8, round(long * aspect)), long)
        tex, alpha = (photo_texture if cls else page_texture)(rng, th, tw)
        if rng.random() < cfg.shadow_p:
            size = math.sqrt(poly_area(quad))
            drop_shadow(rng, img, quad, rng.uniform(0.15, 0.6), size * rng.uniform(0.005, 0.05),
                        light * size * rng.uniform(0.0, 0.04))
        _warp_into(img, tex, alpha, quad)
    img = camera_pipeline(rng, img, cfg)
    return img, labels_of(objs)


def warm() -> None:
    """Load the bundled pictures, glyph sprites and the noise bank once (a few seconds). Call it in a
    parent process before forking loader workers so they all share them instead of each rebuilding."""
    from .effects import _noise_bank
    from .text import warm as warm_text

    warm_text()
    _noise_bank()


# ---------------------------------------------------------------------------------------------- writing
def draw_labels(img: np.ndarray, labels: np.ndarray, names=NAMES) -> np.ndarray:
    """A copy of ``img`` with each quad outlined, its first corner (TL) dotted and its class named."""
    out = img.copy()
    t = max(1, round(max(img.shape[:2]) / 400))
    for row in labels:
        cls, q = int(row[0]), row[1:].reshape(4, 2)
        col = (0, 200, 255) if cls == 0 else (255, 80, 255)
        cv2.polylines(out, [np.round(q * 4).astype(np.int32)], True, col, t, cv2.LINE_AA, shift=2)
        cv2.circle(out, tuple(np.round(q[0]).astype(int)), 3 * t, (0, 0, 255), -1)
        cv2.putText(out, names[cls] if cls < len(names) else str(cls), tuple(np.round(q[0]).astype(int) + 4 * t),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5 * t, col, t, cv2.LINE_AA)
    return out


def preview_grid(samples: list[tuple[np.ndarray, np.ndarray]], cell: int = 320, cols: int = 4) -> np.ndarray:
    """Letterboxed thumbnails of annotated samples in a grid."""
    rows = math.ceil(len(samples) / cols)
    grid = np.full((rows * cell, cols * cell, 3), 40, np.uint8)
    for i, (img, lab) in enumerate(samples):
        ann = draw_labels(img, lab)
        s = cell / max(ann.shape[:2])
        th = cv2.resize(ann, (max(1, round(ann.shape[1] * s)), max(1, round(ann.shape[0] * s))),
                        interpolation=cv2.INTER_AREA)
        y, x = (i // cols) * cell + (cell - th.shape[0]) // 2, (i % cols) * cell + (cell - th.shape[1]) // 2
        grid[y:y + th.shape[0], x:x + th.shape[1]] = th
    return grid


def _write_one(args) -> tuple[int, int]:
    out_dir, seed, i, cfg_dict = args
    img, labels = render_sample(np.random.default_rng([seed, i]), SynthConfig.from_dict(cfg_dict))
    name = f"{i:06d}"
    cv2.imwrite(str(Path(out_dir) / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_labels(Path(out_dir) / f"{name}.txt", labels, img.shape[1], img.shape[0])
    return i, len(labels)


def write_dataset(out_dir, n: int, seed: int, cfg: SynthConfig | None = None, workers: int = 1,
                  progress: bool = True, preview: int = 16) -> dict:
    """Write ``n`` samples to ``out_dir`` and return the dataset.json content."""
    from tqdm import tqdm

    cfg = cfg or SynthConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), seed, i, cfg.to_dict()) for i in range(n)]
    counts = [0] * n
    bar = tqdm(total=n, desc=f"synth {out.name}", unit="img", disable=not progress)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for i, k in pool.imap_unordered(_write_one, jobs, chunksize=4):
                counts[i] = k
                bar.update()
    else:
        for job in jobs:
            i, k = _write_one(job)
            counts[i] = k
            bar.update()
    bar.close()
    if preview and n:
        from .labels import read_labels

        samples = []
        for i in range(min(preview, n)):
            img = cv2.imread(str(out / f"{i:06d}.jpg"))
            samples.append((img, read_labels(out / f"{i:06d}.txt", img.shape[1], img.shape[0])))
        cv2.imwrite(str(out / "preview.jpg"), preview_grid(samples), [cv2.IMWRITE_JPEG_QUALITY, 90])
    version = GENERATOR_VERSION if cfg.recipe < 2 else "2.0"
    meta = {"generator": "polydet.data.synth", "version": version, "seed": seed, "n": n,
            "names": list(NAMES), "objects": int(sum(counts)), "cfg": cfg.to_dict()}
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return meta


def _init_worker():
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet data synth", description="Write a synthetic main-area dataset "
                                "(NAME.jpg + NAME.txt label lines, preview.jpg, dataset.json).")
    p.add_argument("out", type=Path, help="output directory")
    p.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed: sample i uses default_rng([seed, i])")
    p.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    p.add_argument("--preset", default="v1", help="generator settings: v1 (1.0, the validation set's), train "
                   "or heldout (2.0 with those source packages; see polydet.data.synth2.PRESETS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.n < 0 or args.workers < 1:
        parser.error("--n must be >= 0 and --workers >= 1")
    from .synth2 import preset

    meta = write_dataset(args.out, args.n, args.seed, preset(args.preset), workers=args.workers,
                         progress=not args.no_progress)
    print(f"wrote {meta['n']} images ({meta['objects']} objects) to {args.out}")
    return 0


def labels_of(objs) -> np.ndarray:
    """(K, 9) float32 labels of placed objects ``(class, texture, quad)``: class, then the corners in order."""
    labels = np.zeros((len(objs), 9), np.float32)
    for i, (cls, _, quad) in enumerate(objs):
        labels[i, 0] = cls
        labels[i, 1:] = order_corners_np(quad).reshape(-1)
    return labels
