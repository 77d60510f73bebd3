"""polygon_nms against plain shapely greedy loops, in one run: ``python benchmarks/bench_nms.py``.

A shim: the benchmark lives in ``polydet.bench.nms`` (also ``polydet bench nms``); see its docstring.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from polydet.bench.nms import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
