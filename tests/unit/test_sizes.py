"""Size limits (issue 11): no source file over 400 lines, no function over 60 (scripts/check_sizes.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_sizes", REPO / "scripts" / "check_sizes.py")
sizes = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(sizes)

def test_the_tree_keeps_the_limits():
    assert [str(o) for o in sizes.check(REPO)] == []


def test_the_check_finds_long_files_and_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    fits = f'def fits():\n    """60 lines with its def and docstring."""\n{body}\n'
    long = f'class K:\n    def long(self):\n        """61."""\n        y = 0\n{body.replace("    ", "        ")}\n'
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text(fits + long)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "b.sh").write_text("echo\n" * 401)
    (tmp_path / "scripts" / "c.sh").write_text("echo\n" * 400)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "d.sh").write_text("echo\n" * 999)  # tests are not covered
    assert [str(o) for o in sizes.check(tmp_path)] == [
        "scripts/b.sh: 401 lines (limit 400)",
        "src/a.py:62 K.long(): 61 lines (limit 60)",
    ]
    assert sizes.main([str(tmp_path)]) == 1
    assert sizes.main([str(tmp_path / "tests")]) == 0
