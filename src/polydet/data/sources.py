"""Offline image and font sources bundled inside PyPI wheels (scikit-image, scikit-learn, matplotlib).

Nothing is downloaded: only files that ship inside the installed wheels are read. Everything is loaded
once per process on first use (lazily, so importing this module costs nothing) and kept in memory as
BGR uint8. A missing package only shrinks the pool; an empty pool is an error that names the extra.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import MissingDependencyError

# Natural photographs: contents of printed photos / screens and material for backgrounds.
_SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
                   "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png",
                   "moon.png", "clock_motion.png", "cell.png"]
# Grey textures: good backgrounds (ground, walls), poor "photo" contents on their own.
_SKIMAGE_TEXTURES = ["brick.png", "grass.png", "gravel.png"]
_SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
_MPL_PHOTOS = ["grace_hopper.jpg"]
# Graphics with alpha: small logos printed on cards / letterheads.
_LOGOS = [("skimage", "logo.png"), ("mpl", "logo2.png"), ("mpl", "Minduka_Present_Blue_Pack.png")]
# Fonts that draw Latin text (the STIX size/symbol variants, cmex/cmsy and LastResort draw symbols).
_FONT_NAMES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
               "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
               "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf",
               "cmtt10.ttf", "cmb10.ttf", "cmti10.ttf", "DejaVuSansDisplay.ttf"]


def _pkg_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _dirs() -> dict[str, Path | None]:
    sk, sl, mpl = _pkg_dir("skimage"), _pkg_dir("sklearn"), _pkg_dir("matplotlib")
    return {"skimage": sk / "data" if sk else None,
            "sklearn": sl / "datasets" / "images" if sl else None,
            "mpl": mpl / "mpl-data" / "sample_data" if mpl else None,
            "mplfonts": mpl / "mpl-data" / "fonts" / "ttf" if mpl else None}


def _read(path: Path | None, flags=cv2.IMREAD_COLOR) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    return cv2.imread(str(path), flags)


def _cap(img: np.ndarray, long_side: int = 1024) -> np.ndarray:
    s = long_side / max(img.shape[:2])
    return cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img


# Terrain colours by height (BGR): water, lowland green, dry grass, rock, snow.
_TERRAIN = np.array([[120, 80, 40], [60, 110, 70], [90, 150, 160], [110, 120, 130], [235, 235, 235]], np.float32)


def _hillshade(z: np.ndarray) -> np.ndarray:
    """A digital elevation model rendered as a shaded terrain picture (a map / aerial look)."""
    z = cv2.resize(z.astype(np.float32), None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)  # no blocks
    z = (z - z.min()) / max(float(np.ptp(z)), 1e-6)
    gy, gx = np.gradient(z * 60)
    shade = np.clip(0.65 + 0.45 * (gx - gy) / np.sqrt(1 + gx * gx + gy * gy), 0, 1)
    lut = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 5), _TERRAIN[:, c]) for c in range(3)], 1)
    col = lut[(z * 255).astype(np.uint8)].astype(np.float32)
    return np.clip(col * shade[..., None] * 1.15, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Pool:
    photos: tuple[np.ndarray, ...]  # BGR natural pictures (grey ones are stored as 3-channel)
    textures: tuple[np.ndarray, ...]  # BGR grey textures for backgrounds
    faces: np.ndarray  # (N, 25, 25) uint8 faces (LFW subset) for contact sheets / ID cards
    logos: tuple[np.ndarray, ...]  # BGRA graphics
    fonts: tuple[str, ...]  # TrueType paths, sorted


@functools.lru_cache(maxsize=1)
def pool() -> Pool:
    """Load every bundled picture once per process (about 10 MB)."""
    d = _dirs()
    photos = []
    for key, names in (("skimage", _SKIMAGE_PHOTOS), ("sklearn", _SKLEARN_PHOTOS), ("mpl", _MPL_PHOTOS)):
        for n in names:
            img = _read(d[key] / n if d[key] else None)
            if img is not None:
                photos.append(_cap(img))
    if d["mpl"] is not None:  # elevation models become aerial/terrain pictures
        for n, k in (("jacksboro_fault_dem.npz", "elevation"), ("topobathy.npz", "topo")):
            p = d["mpl"] / n
            if p.is_file():
                photos.append(_hillshade(np.load(p)[k]))
    textures = [_cap(t) for n in _SKIMAGE_TEXTURES if (t := _read(d["skimage"] / n if d["skimage"] else None))
                is not None]
    faces = np.zeros((0, 25, 25), np.uint8)
    if d["skimage"] is not None and (d["skimage"] / "lfw_subset.npy").is_file():
        faces = (np.load(d["skimage"] / "lfw_subset.npy") * 255).astype(np.uint8)
    logos = []
    for key, n in _LOGOS:
        img = _read(d[key] / n if d[key] else None, cv2.IMREAD_UNCHANGED)
        if img is not None and img.ndim == 3 and img.shape[2] == 4:
            logos.append(img)
    fonts = sorted(str(d["mplfonts"] / n) for n in _FONT_NAMES if d["mplfonts"] and (d["mplfonts"] / n).is_file())
    if len(photos) < 3:
        raise MissingDependencyError("the synthetic data generator needs the bundled sample pictures of "
                                     "scikit-image / scikit-learn / matplotlib: pip install 'polydet[data]'")
    return Pool(tuple(photos), tuple(textures), faces, tuple(logos), tuple(fonts))


# ------------------------------------------------------------------ extra sources (polydet data sources)
SOURCES_ENV = "POLYDET_SOURCES"  # folder written by `polydet data sources` (default ./data_sources)
# Which pictures the generator draws from: "pypi" (the bundled samples only: generator 1.0, so the fixed
# validation set stays byte-identical), "train" (those + the training packages) or "heldout" (only the
# held-out packages). Set per sample by render_sample through ``using``; never at import.
_SPLIT: contextvars.ContextVar[str] = contextvars.ContextVar("polydet_sources_split", default="pypi")


@contextlib.contextmanager
def using(split: str):
    if split not in ("pypi", "train", "heldout"):
        raise ValueError(f"sources must be pypi, train or heldout, got {split!r}")
    token = _SPLIT.set(split)
    try:
        yield
    finally:
        _SPLIT.reset(token)


def active_split() -> str:
    return _SPLIT.get()


def sources_dir() -> Path:
    return Path(os.environ.get(SOURCES_ENV) or "data_sources")


@dataclass(frozen=True)
class Extra:
    photos: tuple[np.ndarray, ...]  # BGR photographs (wallpaper packages)
    pages: tuple[np.ndarray, ...]  # BGR rendered pages of PDF manuals
    fonts: tuple[str, ...]  # font files (CJK)


def _read_dir(d: Path) -> tuple[np.ndarray, ...]:
    return tuple(im for f in sorted(d.glob("*.jpg")) if (im := _read(f)) is not None) if d.is_dir() else ()


@functools.lru_cache(maxsize=4)
def _extra(split: str, root: str) -> Extra:
    d = Path(root) / split
    ext = Extra(_read_dir(d / "photos"), _read_dir(d / "pages"),
                tuple(sorted(str(f) for f in (d / "fonts").glob("*.tt[cf]"))) if (d / "fonts").is_dir() else ())
    if not ext.photos or not ext.pages:
        raise MissingDependencyError(f"no {split} photos/pages in {d}: run `polydet data sources` (or set "
                                     f"{SOURCES_ENV} to the folder it wrote)")
    return ext


def extra(split: str | None = None) -> Extra:
    """The installed extra sources of ``split`` (default: the active one; "pypi" has none)."""
    split = split or active_split()
    if split == "pypi":
        return Extra((), (), ())
    return _extra(split, str(sources_dir().resolve()))


def picture_sources(textures: bool) -> tuple[np.ndarray, ...]:
    """Pictures for photo contents and backgrounds under the active split (see ``_SPLIT``)."""
    p, split = pool(), active_split()
    tex = p.textures if textures else ()
    if split == "pypi":
        return p.photos + tex
    if split == "heldout":
        return extra("heldout").photos
    return p.photos + extra("train").photos + tex
