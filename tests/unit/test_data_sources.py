"""polydet data sources: Debian packages -> downscaled photos / rendered pages / fonts with a manifest,
split by package; the generator's picture pool under each split. The .deb used here is built locally
with dpkg-deb (no network); PDF pages are rendered by the real pdftoppm."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import cv2
import numpy as np
import pytest

from polydet.data import debsources as ds
from polydet.data import sources

DEP5 = textwrap.dedent("""\
    Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
    Files: *
    Copyright: 2020 Someone
    License: CC-BY-SA-4.0
     Text.

    Files: debian/*
    License: GPL-2+
     Text.

    Files: extra/*
    License: CC-BY-SA-4.0
""")


def test_licences_of_a_dep5_copyright_file():
    assert ds.licences(DEP5) == ["CC-BY-SA-4.0", "GPL-2+"]
    assert ds.licences("This package was debianized by someone.\nIt is free software.\n") == []


def test_every_package_in_exactly_one_split_and_both_splits_have_photos_and_pages():
    ds.check_splits()
    kinds = {(s.split, s.kind) for s in ds.SOURCES}
    assert {("train", "photos"), ("train", "pages"), ("heldout", "photos"), ("heldout", "pages")} <= kinds
    clash = ds.SOURCES + (ds.Source(ds.SOURCES[0].package, "photos", "heldout", "x"),)
    with pytest.raises(ValueError, match="both train and heldout"):
        ds.check_splits(clash)
    with pytest.raises(ValueError, match="split must be"):
        ds.check_splits((ds.Source("p", "photos", "test", "x"),))


def test_dedupe_keeps_one_file_per_wallpaper():
    m = {"./usr/share/wallpapers/Path/contents/images/1920x1080.jpg": b"a",
         "./usr/share/wallpapers/Path/contents/images/5120x2880.jpg": b"b",
         "./usr/share/wallpapers/Path/contents/images/720x1440.jpg": b"c",
         "./usr/share/backgrounds/mate/abstract/Elephants.jpg": b"d",
         "./usr/share/backgrounds/mate/abstract/Elephants_3840x2160.jpg": b"e",
         "./usr/share/backgrounds/mate/nature/Dune.jpg": b"f"}
    got = dict(ds._dedupe_photos(m))
    assert sorted(got.values()) == [b"b", b"d", b"f"]


def _build_deb(tmp_path, package: str, files: dict[str, bytes]):
    root = tmp_path / "pkgroot"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.2-3\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test\n")
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(cache / f"{package}_1.2-3_all.deb")],
                   check=True, capture_output=True)
    return cache


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed (Debian tools)")
def test_install_photos_from_a_deb(tmp_path):
    big = np.zeros((1200, 1600, 3), np.uint8)
    big[:, :800] = (30, 120, 200)
    png = cv2.imencode(".png", big)[1].tobytes()
    cache = _build_deb(tmp_path, "fake-wallpapers", {
        "usr/share/doc/fake-wallpapers/copyright": DEP5.encode(),
        "usr/share/backgrounds/sea.png": png, "usr/share/backgrounds/readme.txt": b"not a picture"})
    src = ds.Source("fake-wallpapers", "photos", "heldout", r"/backgrounds/[^/]+\.(jpg|png)$")
    rows = ds.install_source(src, tmp_path / "out", cache)
    assert [(r["file"], r["split"], r["kind"], r["package"], r["version"], r["licences"]) for r in rows] == [
        ("heldout/photos/fake-wallpapers-sea.jpg", "heldout", "photos", "fake-wallpapers", "1.2-3",
         ["CC-BY-SA-4.0", "GPL-2+"])]
    img = cv2.imread(str(tmp_path / "out" / rows[0]["file"]))
    assert img.shape == (600, 800, 3)  # long side 800, aspect kept
    assert np.abs(img[300, 200].astype(int) - [30, 120, 200]).max() <= 3
    assert (tmp_path / "out" / "licences" / "fake-wallpapers.copyright").read_text() == DEP5


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("pdftoppm") is None,
                    reason="needs dpkg-deb and pdftoppm (apt-get install poppler-utils: make sysdeps)")
def test_install_pages_renders_text_pages_and_skips_blank_ones(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    pdf = tmp_path / "manual.pdf"
    with PdfPages(pdf) as pp:
        for k in range(6):
            fig = Figure(figsize=(8.27, 11.69))
            if k != 3:  # page 4 stays blank
                for i in range(40):
                    fig.text(0.08, 0.95 - i * 0.022, f"line {i} of page {k + 1}: " + "typeset words " * 5, fontsize=9)
            pp.savefig(fig)
    cache = _build_deb(tmp_path, "fake-doc", {"usr/share/doc/fake-doc/copyright": b"free text, no fields\n",
                                             "usr/share/doc/fake-doc/manual.pdf": pdf.read_bytes()})
    rows = ds.install_source(ds.Source("fake-doc", "pages", "train", r"\.pdf$", pages=10), tmp_path / "out", cache)
    pages = sorted(int(r["file"].rsplit("-p", 1)[1][:4]) for r in rows)
    assert pages == [2, 3, 5, 6]  # the cover (1) is skipped, the blank page 4 fails MIN_INK
    assert all(r["licences"] == ["see licences/fake-doc.copyright"] for r in rows)
    img = cv2.imread(str(tmp_path / "out" / rows[0]["file"]))
    assert max(img.shape[:2]) == ds.LONG_SIDE and ds.ink_fraction(img) >= ds.MIN_INK


def test_cli_lists_every_package(capsys):
    from polydet.cli import main

    assert main(["data", "sources", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split() for ln in lines] == [[s.package, s.split, s.kind] for s in ds.SOURCES]


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """A sources folder: train photos are grey 40, held-out photos grey 200 (told apart by value)."""
    for split, v in (("train", 40), ("heldout", 200)):
        for kind, n in (("photos", 3 if split == "train" else 2), ("pages", 2)):
            d = tmp_path / split / kind
            d.mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(d / f"{i}.jpg"), np.full((60, 80, 3), v + i, np.uint8))
    (tmp_path / "manifest.json").write_text(json.dumps({"files": []}))
    monkeypatch.setenv(sources.SOURCES_ENV, str(tmp_path))
    return tmp_path


def test_picture_pool_per_split(fake_sources):
    p = sources.pool()
    assert sources.active_split() == "pypi"
    assert len(sources.picture_sources(True)) == len(p.photos) + len(p.textures)
    with sources.using("heldout"):
        got = sources.picture_sources(True)
        assert sorted(round(float(g.mean())) for g in got) == [200, 201]
        assert len(sources.extra().pages) == 2
    with sources.using("train"):
        got = sources.picture_sources(False)
        assert len(got) == len(p.photos) + 3
        assert sorted(round(float(g.mean())) for g in got[len(p.photos):]) == [40, 41, 42]
    assert sources.active_split() == "pypi"
    with pytest.raises(ValueError, match="pypi, train or heldout"):
        with sources.using("test"):
            pass


def test_missing_sources_name_the_command(tmp_path, monkeypatch):
    from polydet.errors import MissingDependencyError

    monkeypatch.setenv(sources.SOURCES_ENV, str(tmp_path / "none"))
    with pytest.raises(MissingDependencyError, match="polydet data sources"):
        sources.extra("train")
