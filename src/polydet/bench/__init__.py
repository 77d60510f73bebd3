"""Benchmarks: ``polydet bench pipeline|nms|compare|serve``. Each prints a table of numbers measured in
one run, side by side, so ratios hold on a noisy machine."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "pipeline": "polydet.bench.pipeline",  # in-process stage timings per backend / size / batch
    "nms": "polydet.bench.nms",  # polygon_nms vs a shapely greedy loop
    "compare": "polydet.bench.compare",  # in-process vs served REST/gRPC vs the seeds' naive way
    "serve": "polydet.bench.serve",  # locust load test against a TorchServe
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: polydet bench {{{','.join(COMMANDS)}}} [options]  (each has --help)", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0
