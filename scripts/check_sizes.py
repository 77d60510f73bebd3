"""Size limits of issue 11: no source file over 400 lines, no function over 60 lines.

``python scripts/check_sizes.py [ROOT]`` prints one line per offender and exits 1 if there is any.
A file counts its lines (``.py`` and ``.sh``); a function counts from its ``def`` line through the
last line of its body, docstring included (decorators not); a nested function counts on its own and
inside its parent. ``tests/`` is not covered: test modules group many small cases.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
TREES = ("src", "handlers", "docker", "scripts", "benchmarks", "loadtest")
SUFFIXES = (".py", ".sh")


@dataclass(frozen=True)
class Offender:
    path: str  # relative to the root, with forward slashes
    name: str  # "" for the file itself, else the function's qualified name
    line: int  # where it starts (1 for a file)
    lines: int
    limit: int

    def __str__(self) -> str:
        what = f"{self.path}:{self.line} {self.name}()" if self.name else self.path
        return f"{what}: {self.lines} lines (limit {self.limit})"


def _functions(tree: ast.AST, prefix: str = ""):
    """``(qualified name, def line, end line)`` of every function in ``tree``, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            yield name, node.lineno, node.end_lineno
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def check_file(path: Path, root: Path) -> list[Offender]:
    """The offenders in one source file."""
    rel = path.relative_to(root).as_posix()
    text = path.read_text(encoding="utf-8")
    out = []
    n = len(text.splitlines())
    if n > MAX_FILE_LINES:
        out.append(Offender(rel, "", 1, n, MAX_FILE_LINES))
    if path.suffix == ".py":
        for name, start, end in _functions(ast.parse(text, filename=str(path))):
            if end - start + 1 > MAX_FUNCTION_LINES:
                out.append(Offender(rel, name, start, end - start + 1, MAX_FUNCTION_LINES))
    return out


def source_files(root: Path, trees=TREES) -> list[Path]:
    """The ``.py`` and ``.sh`` files under ``root/tree`` for each tree (a missing tree has none)."""
    files = []
    for tree in trees:
        base = root / tree
        if base.is_dir():
            files += [p for p in base.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                      and "__pycache__" not in p.parts]
        elif base.is_file() and base.suffix in SUFFIXES:
            files.append(base)
    return sorted(files)


def check(root: Path, trees=TREES) -> list[Offender]:
    """Every offender under ``root``'s ``trees``, by path and line."""
    return [o for p in source_files(root, trees) for o in check_file(p, root)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else Path(__file__).resolve().parents[1]
    offenders = check(root)
    for o in offenders:
        print(o)
    return 1 if offenders else 0


if __name__ == "__main__":
    sys.exit(main())
