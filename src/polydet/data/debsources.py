"""``polydet data sources``: real photographs and typeset pages from Debian packages, for the generator.

Every file comes from a package of the Debian archive fetched with ``apt-get download`` (no other
network access): desktop wallpaper packages give photographs (contents of prints and screens, and
backgrounds), PDF manuals give real typeset pages (rendered by poppler's ``pdftoppm``), a font package
gives CJK glyphs. Pictures are downscaled to ``LONG_SIDE`` px (JPEG q90) into ``OUT/<split>/<kind>/``;
``OUT/manifest.json`` records each file's package, version, split and the licences named in the
package's copyright file (copied to ``OUT/licences/``). A package belongs to exactly one split:
``train`` (the generator may draw from it) or ``heldout`` (only the held-out set builder may).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LONG_SIDE = 800  # px: the model sees objects at a few hundred px at most; keeps the folder carriable
JPEG_Q = 90
DEFAULT_OUT = Path("data_sources")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Source:
    package: str
    kind: str  # "photos" (wallpapers), "pages" (PDF manuals) or "fonts"
    split: str  # "train" or "heldout": never both
    members: str  # regex on the archive member path
    pages: int = 8  # PDFs: pages rendered per document, spread evenly over it
    limit: int = 40  # at most this many files from the package


# Which package feeds which split. Held-out packages differ in kind of content too (other photographers,
# other typesetting systems), so the held-out set measures generalisation, not memory.
SOURCES = (
    Source("plasma-workspace-wallpapers", "photos", "train", r"/wallpapers/[^/]+/contents/images/\d+x\d+\.(jpg|png)$"),
    Source("mate-backgrounds", "photos", "train", r"/backgrounds/mate/.*\.(jpg|png)$"),
    Source("ukui-wallpapers", "photos", "train", r"/backgrounds/[^/]+\.(jpg|png)$"),
    Source("r-doc-pdf", "pages", "train", r"/R/doc/manual/R-(intro|FAQ|data|lang|admin)\.pdf$", pages=7),
    Source("auto-multiple-choice-doc-pdf", "pages", "train", r"\.pdf$", pages=5),
    Source("c++-annotations-pdf", "pages", "train", r"/cplusplus\.pdf$", pages=10),
    Source("python-reportlab-doc", "pages", "train", r"\.pdf$", pages=10),
    Source("fonts-wqy-microhei", "fonts", "train", r"\.tt[cf]$"),
    Source("lomiri-wallpapers-16.04", "photos", "heldout", r"/backgrounds/[^/]+\.(jpg|png)$"),
    Source("lomiri-wallpapers-20.04", "photos", "heldout", r"/backgrounds/[^/]+\.(jpg|png)$"),
    Source("why3-doc-pdf", "pages", "heldout", r"\.pdf$", pages=10),
    Source("gri-pdf-doc", "pages", "heldout", r"\.pdf(\.gz)?$", pages=10),
    Source("freefem-doc", "pages", "heldout", r"\.pdf$", pages=8),
    Source("docbook-xsl-doc-pdf", "pages", "heldout", r"docbook-xsl-doc-pdf/doc/reference\.pdf(\.gz)?$", pages=8),
    Source("live-manual-pdf", "pages", "heldout", r"portrait\.(en|de|fr|it|es)\.a4\.pdf(\.gz)?$", pages=4),
)


def download(package: str, cache: Path) -> Path:
    """``apt-get download PACKAGE`` into ``cache`` (reused if there); returns the .deb path."""
    cache.mkdir(parents=True, exist_ok=True)
    have = sorted(cache.glob(f"{package}_*.deb"))
    if not have:
        r = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed: {r.stderr.strip()[-300:]}")
        have = sorted(cache.glob(f"{package}_*.deb"))
    if not have:
        raise RuntimeError(f"apt-get download {package} wrote no .deb into {cache}")
    return have[-1]


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def deb_members(deb: Path, pattern: str) -> dict[str, bytes]:
    """Regular files of the .deb whose path matches ``pattern`` (regex), streamed through dpkg-deb."""
    rx = re.compile(pattern)
    out: dict[str, bytes] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
            for m in tf:
                if m.isfile() and rx.search(m.name):
                    f = tf.extractfile(m)
                    out[m.name] = f.read() if f else b""
    return out


def licences(copyright_text: str) -> list[str]:
    """Licence names of a Debian copyright file (its ``License:`` fields); [] if not machine-readable."""
    names = [m.strip() for m in re.findall(r"^License:[ \t]*(\S.*)$", copyright_text, re.M)]
    return sorted(set(names))


def downscale(img: np.ndarray, long_side: int = LONG_SIDE) -> np.ndarray:
    s = long_side / max(img.shape[:2])
    return cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img


def _dedupe_photos(members: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """One file per picture: plasma ships each wallpaper at many sizes (keep the largest), MATE ships
    a few at several sizes (``NAME_3840x2160``: keep the plain one)."""
    best: dict[str, tuple[int, str]] = {}
    for name in members:
        m = re.search(r"/(\d+)x(\d+)\.\w+$", name)
        key = name.split("/contents/")[0] if m else re.sub(r"_\d+x\d+(?=\.\w+$)", "", name)
        size = int(m.group(1)) * int(m.group(2)) if m else -len(name)
        if key not in best or size > best[key][0]:
            best[key] = (size, name)
    return [(n, members[n]) for _, n in sorted(best.values(), key=lambda t: t[1])]


MIN_INK = 0.01  # fraction of dark pixels (< 150) a page needs: covers, blank and title pages are skipped


def ink_fraction(img: np.ndarray) -> float:
    return float((cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) < 150).mean())


def _pdf_pages(pdf: bytes, n: int, dest: Path, stem: str) -> list[Path]:
    """Render up to ``n`` text pages of the document to JPEGs: candidates spread over it (a phase taken
    from its name, so translations of one manual give different pages), kept if ``MIN_INK`` is met."""
    if shutil.which("pdftoppm") is None:
        raise RuntimeError("pdftoppm (poppler-utils) is needed to render PDF manuals: apt-get install "
                           "poppler-utils (make sysdeps)")
    with tempfile.TemporaryDirectory() as td:
        src = Path(td) / "doc.pdf"
        src.write_bytes(pdf)
        info = subprocess.run(["pdfinfo", str(src)], capture_output=True, text=True).stdout
        m = re.search(r"^Pages:\s+(\d+)", info, re.M)
        total = int(m.group(1)) if m else 1
        first = 2 if total > 3 else 1
        phase = int(hashlib.sha256(stem.encode()).hexdigest()[:8], 16) % 997 / 997
        k = min(2 * n, total - first + 1)
        cands = sorted({first + int((i + phase) * (total - first + 1) / k) for i in range(k)})
        order = cands[::2] + cands[1::2]  # spread first, the in-between ones only if needed
        out: list[Path] = []
        for page in order:
            if len(out) >= n or page > total:
                break
            base = Path(td) / f"p{page}"
            subprocess.run(["pdftoppm", "-f", str(page), "-l", str(page), "-scale-to", str(LONG_SIDE), "-jpeg",
                            "-jpegopt", f"quality={JPEG_Q}", "-singlefile", str(src), str(base)],
                           check=True, capture_output=True)
            img = cv2.imread(str(base) + ".jpg", cv2.IMREAD_COLOR)
            if img is None or ink_fraction(img) < MIN_INK:
                continue
            path = dest / f"{stem}-p{page:04d}.jpg"
            shutil.move(str(base) + ".jpg", path)
            out.append(path)
        return sorted(out)


def install_source(src: Source, out: Path, cache: Path) -> list[dict]:
    """Fetch one package and write its files; returns their manifest rows."""
    deb = download(src.package, cache)
    version = deb_field(deb, "Version")
    copyright_member = f"/usr/share/doc/{src.package}/copyright"
    found = deb_members(deb, f"{re.escape(copyright_member)}$|{src.members}")
    text = next((v.decode("utf-8", "replace") for k, v in found.items() if k.endswith(copyright_member)), "")
    (out / "licences").mkdir(parents=True, exist_ok=True)
    (out / "licences" / f"{src.package}.copyright").write_text(text)
    files = {k: v for k, v in sorted(found.items()) if not k.endswith(copyright_member)}
    dest = out / src.split / src.kind
    dest.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", src.package)
    written: list[tuple[str, Path]] = []
    if src.kind == "photos":
        for name, data in _dedupe_photos(files)[:src.limit]:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                continue
            p = dest / f"{slug}-{Path(name).stem}.jpg"
            cv2.imwrite(str(p), downscale(img), [cv2.IMWRITE_JPEG_QUALITY, JPEG_Q])
            written.append((name, p))
    elif src.kind == "pages":
        for name, data in list(files.items())[:src.limit]:
            pdf = gzip.decompress(data) if name.endswith(".gz") else data
            stem = f"{slug}-{Path(name).name.split('.pdf')[0]}"
            written += [(name, p) for p in _pdf_pages(pdf, src.pages, dest, stem)]
    else:
        for name, data in list(files.items())[:src.limit]:
            p = dest / Path(name).name
            p.write_bytes(data)
            written.append((name, p))
    lic = licences(text) or [f"see licences/{src.package}.copyright"]
    return [{"file": str(p.relative_to(out)), "split": src.split, "kind": src.kind, "package": src.package,
             "version": version, "member": name, "licences": lic,
             "sha256": hashlib.sha256(p.read_bytes()).hexdigest()[:16]} for name, p in written]


def check_splits(sources=SOURCES) -> None:
    """Every package in exactly one split (the held-out set must never see a training package)."""
    seen: dict[str, str] = {}
    for s in sources:
        if s.split not in SPLITS:
            raise ValueError(f"{s.package}: split must be one of {SPLITS}, got {s.split!r}")
        if seen.setdefault(s.package, s.split) != s.split:
            raise ValueError(f"{s.package} is listed for both {seen[s.package]} and {s.split}")


def install(out: Path = DEFAULT_OUT, cache: Path | None = None, sources=SOURCES, log=print) -> dict:
    """Install every source into ``out`` (replacing what was there) and write ``out/manifest.json``."""
    check_splits(sources)
    cache = cache or Path(tempfile.gettempdir()) / "polydet-debs"
    out = Path(out)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    rows: list[dict] = []
    for src in sources:
        got = install_source(src, out, cache)
        log(f"{src.package:32s} {src.split:8s} {src.kind:7s} {len(got):3d} files")
        rows += got
    total = sum((out / r["file"]).stat().st_size for r in rows)
    manifest = {"long_side": LONG_SIDE, "jpeg_quality": JPEG_Q, "bytes": total,
                "packages": {s.package: {"split": s.split, "kind": s.kind} for s in sources}, "files": rows}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log(f"{len(rows)} files, {total / 1e6:.1f} MB in {out}")
    return manifest


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polydet data sources", description="Install the generator's extra "
                                "sources (Debian wallpapers, PDF manuals, a CJK font) via apt-get download.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--cache", type=Path, help="where the .deb files are kept (default: TMPDIR/polydet-debs)")
    p.add_argument("--list", action="store_true", help="print the packages and their splits, fetch nothing")
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.list:
        for s in SOURCES:
            print(f"{s.package:32s} {s.split:8s} {s.kind}")
        return 0
    install(args.out, args.cache)
    return 0
