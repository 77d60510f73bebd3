"""docs/CONTRACTS.md names real things: every dotted ``polydet.…`` name it mentions imports or resolves."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONTRACTS.md"
NAMES = sorted(set(re.findall(r"\bpolydet(?:\.[A-Za-z_][A-Za-z0-9_]*)+", DOC.read_text())))


def resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_document_names_enough_to_be_checked():
    assert len(NAMES) >= 30, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_documented_name_exists(name):
    resolve(name)
