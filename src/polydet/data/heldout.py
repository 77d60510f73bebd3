"""``polydet data heldout OUT``: the project's held-out set, built only from the held-out source packages.

Generator 2.0 (``synth2.PRESETS["heldout"]``) with every picture and real page taken from the packages
``polydet data sources`` puts in the ``heldout`` split (never drawn from in training: ``sources="train"``
reads only the ``train`` split), at TASK.md's image sizes, from a reserved seed (training seeds are
>= 1000). Procedural surfaces, fonts and the camera model are shared with training: they are code,
not sources. ``dataset.json`` records the packages the set was built from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..train.loader import RESERVED_VAL_SEEDS
from .synth import write_dataset
from .synth2 import preset
from .sources import sources_dir

HELDOUT_SEED = 990  # reserved (RESERVED_VAL_SEEDS): no training run renders with it
HELDOUT_N = 400


def heldout_packages(root: Path | None = None) -> list[dict]:
    """The held-out split's packages from ``manifest.json`` (package, version, licences, files)."""
    root = root or sources_dir()
    mf = root / "manifest.json"
    if not mf.is_file():
        raise FileNotFoundError(f"{mf} missing: run `polydet data sources` first")
    rows = [r for r in json.loads(mf.read_text())["files"] if r["split"] == "heldout"]
    out: dict[str, dict] = {}
    for r in rows:
        d = out.setdefault(r["package"], {"package": r["package"], "version": r["version"], "kind": r["kind"],
                                           "licences": r["licences"], "files": 0})
        d["files"] += 1
    return sorted(out.values(), key=lambda d: d["package"])


def build(out: Path, n: int = HELDOUT_N, seed: int = HELDOUT_SEED, workers: int = 1, progress: bool = True) -> dict:
    if seed not in RESERVED_VAL_SEEDS:
        raise ValueError(f"the held-out seed must be one of the reserved seeds {sorted(RESERVED_VAL_SEEDS)}")
    packages = heldout_packages()
    meta = write_dataset(out, n, seed, preset("heldout"), workers=workers, progress=progress)
    meta.update(preset="heldout", sources=packages)
    (Path(out) / "dataset.json").write_text(json.dumps(meta, indent=2))
    return meta


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet data heldout", description="Write the held-out set (generator "
                                "2.0 on the held-out source packages only).")
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=HELDOUT_N, help=f"images (default {HELDOUT_N})")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help=f"a reserved seed (default {HELDOUT_SEED})")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    a = make_parser().parse_args(argv)
    meta = build(a.out, a.n, a.seed, a.workers, not a.no_progress)
    print(f"wrote {meta['n']} images ({meta['objects']} objects) from {len(meta['sources'])} held-out packages "
          f"to {a.out}")
    return 0
