"""Compile the store guard's Java sources and write its jar, byte for byte reproducibly.

``python -m polydet.serving.storeguard.build [--out JAR]`` compiles ``java/`` against TorchServe's
``model-server.jar`` (for the exception class the guard throws) with ``javac --release 11`` (the
oldest Java TorchServe 0.12.0 runs on), and zips the classes with fixed timestamps. The manifest
records the SHA-256 of the sources, so a test can tell a stale jar from a current one.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from . import JAR_NAME

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "java"
AGENT_CLASS = "polydet.storeguard.Agent"
REPLACEMENT = "org/pytorch/serve/archive/s3/HttpUtils.class"
RESOURCE = "polydet/storeguard/HttpUtils.class.bin"  # Agent.RESOURCE, without the leading slash
EPOCH = (1980, 1, 1, 0, 0, 0)


def source_files() -> list[Path]:
    return sorted(SOURCES.rglob("*.java"))


def source_digest() -> str:
    h = hashlib.sha256()
    for f in source_files():
        h.update(f.relative_to(SOURCES).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def torchserve_jar() -> Path:
    import ts

    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def javac_version(javac: str = "javac") -> str:
    r = subprocess.run([javac, "-version"], capture_output=True, text=True, check=True)
    return (r.stdout or r.stderr).strip()


def manifest(digest: str, javac: str) -> str:
    # the javac release too: another javac may emit other (equally valid) bytes for the same sources
    lines = ["Manifest-Version: 1.0", f"Premain-Class: {AGENT_CLASS}", f"Polydet-Source-SHA256: {digest}",
             f"Polydet-Javac: {javac}"]
    return "\r\n".join(lines) + "\r\n\r\n"


def read_manifest(jar: Path) -> dict[str, str]:
    with zipfile.ZipFile(jar) as z:
        text = z.read("META-INF/MANIFEST.MF").decode()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def build(out: Path, javac: str = "javac") -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        classes = Path(tmp)
        cmd = [javac, "--release", "11", "-nowarn", "-cp", str(torchserve_jar()), "-d", str(classes),
               *map(str, source_files())]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"javac failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        entries = {"META-INF/MANIFEST.MF": manifest(source_digest(), javac_version(javac)).encode()}
        for f in sorted(classes.rglob("*.class")):
            name = f.relative_to(classes).as_posix()
            entries[RESOURCE if name == REPLACEMENT else name] = f.read_bytes()
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries.items():
                info = zipfile.ZipInfo(name, EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m polydet.serving.storeguard.build", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / JAR_NAME)
    p.add_argument("--javac", default="javac")
    args = p.parse_args(argv)
    print(f"wrote {build(args.out, args.javac)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
