"""Benchmark-only: appended to a copy of handlers/polydet_handler.py inside a benchmark's archive (never
shipped; ``overhead_served_threads.py --profile-dir``). It wraps ``PolydetHandler.handle`` to count, in a real
TorchServe worker, this thread's CPU inside ``handle`` and between two calls (TorchServe's worker loop:
reading the batch, its request objects, the response framing, sendall, its log lines), per image, and
writes ``<dir>/<pid>.json`` every 25 batches. ``POLYDET_OVERHEAD_CPROFILE=1`` also runs cProfile from the
first batch on (then the counts include cProfile's own cost) and dumps ``<dir>/<pid>.prof``."""

import json as _json
import os as _os
import time as _time

_DIR = _os.environ.get("POLYDET_OVERHEAD_PROFILE", "")
_STATE = {"batches": 0, "images": 0, "inside_s": 0.0, "outside_s": 0.0, "last_exit": None, "prof": None}
_handle = PolydetHandler.handle  # noqa: F821 - defined by the handler file this is appended to


def _profiled_handle(self, data, context):
    s = _STATE
    t0 = _time.thread_time()
    if s["last_exit"] is not None:
        s["outside_s"] += t0 - s["last_exit"]
    if s["prof"] is None and _os.environ.get("POLYDET_OVERHEAD_CPROFILE") == "1":
        import cProfile

        s["prof"] = cProfile.Profile()
        s["prof"].enable()
    out = _handle(self, data, context)
    t1 = _time.thread_time()
    s["inside_s"] += t1 - t0
    s["batches"] += 1
    s["images"] += len(data)
    s["last_exit"] = t1
    if _DIR and s["batches"] % 25 == 0:
        stats = {k: v for k, v in s.items() if k not in ("prof", "last_exit")}
        with open(_os.path.join(_DIR, f"{_os.getpid()}.json"), "w") as f:
            _json.dump(stats, f)
        if s["prof"] is not None:
            s["prof"].dump_stats(_os.path.join(_DIR, f"{_os.getpid()}.prof"))
    return out


PolydetHandler.handle = _profiled_handle  # noqa: F821
