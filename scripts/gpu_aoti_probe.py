"""Which AOTInductor CUDA package loads and runs on this machine, and where one that crashes dies (issue 14).

The first fp16 CUDA package compiled on the H100 (torch 2.11.0+cu130) crashed its loading process with SIGSEGV
inside ``aoti_load_package`` (BENCHMARKS.md, "GPU serving"). ``run`` compiles variants side by side, each in
its own process, and loads and runs each in a fresh process, so that one crash costs one row:

- tiny models (a conv and a buffer, ~20 s to compile): CUDA fp16 channels-last with polydet's metadata, CUDA
  fp32 with none, and the CPU package with polydet's metadata. If the tiny CUDA packages crash too, the cause
  is this torch/driver/toolchain, not our model or metadata;
- the polydet model: fp16 channels-last dynamic batch with the metadata (what ``polydet export`` writes),
  fp32, fp16 without polydet's metadata, fp16 at a fixed batch of 64;
- the shipped one loaded three times more, side by side: with ``device_index=-1`` (what the backend passed
  when it crashed; every other load names the current device), through ``polydet.backends`` (numba, scipy
  imported) with the caller's environment (step 1 puts nvImageCodec's libraries on LD_LIBRARY_PATH), and after
  torchvision's nvJPEG decode in the same process (as in the pytest process that crashed).

A load that dies from a signal prints its native stack (a SIGSEGV handler compiled here with the system C
compiler and installed in the child through ctypes, chained before faulthandler's Python stack), and the
shipped package's linking (ldd, readelf -d) and file list go to the JSON. The first polydet variant that
loads, runs and matches eager (fp16 tolerance) is copied to ``--best``. JSON rows to ``--out``.

    python3 scripts/gpu_aoti_probe.py run --out OUT.json --best /tmp/gb/aoti.pt2 --budget 320
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/gb/probe")
# name: (model, device, precision, polydet metadata, batch (0: dynamic 1..1024), channels-last). Most telling first.
VARIANTS = {
    "polydet_fp16_cl_meta_dyn": ("polydet", "cuda", "fp16", True, 0, True),  # what `polydet export` writes
    "tiny_cuda_fp16_cl_meta": ("tiny", "cuda", "fp16", True, 0, True),
    "tiny_cuda_fp32_plain": ("tiny", "cuda", "fp32", False, 0, False),
    "tiny_cpu_fp32_meta": ("tiny", "cpu", "fp32", True, 0, False),
    "polydet_fp32_meta_dyn": ("polydet", "cuda", "fp32", True, 0, False),
    "polydet_fp16_cl_plain_dyn": ("polydet", "cuda", "fp16", False, 0, True),
    "polydet_fp16_cl_meta_b64": ("polydet", "cuda", "fp16", True, 64, True),
    "polydet_cpu_fp32_meta_dyn": ("polydet", "cpu", "fp32", True, 0, False),  # --only: the CPU check here
}
DEFAULT = [n for n in VARIANTS if n != "polydet_cpu_fp32_meta_dyn"]
SHIPPED = "polydet_fp16_cl_meta_dyn"
BEST_ORDER = (SHIPPED, "polydet_fp32_meta_dyn", "polydet_fp16_cl_meta_b64")  # usable by the backend (metadata)
SEGV_C = r"""
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static struct sigaction prev[32];
static void on_fatal(int sig, siginfo_t *si, void *uc) {
  void *frames[64]; char msg[160];
  int k = snprintf(msg, sizeof msg, "\n[native stack] signal %d, fault address %p\n", sig, si->si_addr);
  write(2, msg, k);
  backtrace_symbols_fd(frames, backtrace(frames, 64), 2);
  write(2, "[native stack end]\n", 19);
  sigaction(sig, &prev[sig], NULL);  /* faulthandler's: the Python stack, then the default action */
  raise(sig);
}
void polydet_install(void) {
  stack_t ss; ss.ss_sp = malloc(1 << 16); ss.ss_size = 1 << 16; ss.ss_flags = 0; sigaltstack(&ss, NULL);
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fatal; sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  int sigs[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
  for (int i = 0; i < 5; i++) sigaction(sigs[i], &sa, &prev[sigs[i]]);
}
"""


# -- the child processes ----------------------------------------------------------------------------------
def tiny_model():
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 11, 3, stride=2, padding=1)
            self.register_buffer("scale", torch.linspace(0.5, 1.5, 11))

        def forward(self, x):
            return (torch.nn.functional.silu(self.conv(x)).flatten(2).transpose(1, 2) * self.scale).sigmoid()

    torch.manual_seed(0)
    return Tiny().eval()


def compile_variant(name: str, out: Path, weights: str) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from polydet.backends.base import META_KEY
    from polydet.export.aoti import CHANNELS_LAST_KEY, FIXED_BATCH_KEY, MAX_BATCH, MAX_BATCH_KEY, compile_package
    from polydet.export.common import example_input, fused_copy, load_or_build
    from polydet.meta import Precision

    kind, device, prec, meta, batch, cl = VARIANTS[name]
    precision = Precision(prec)
    model, info = load_or_build(weights if kind == "polydet" else "random", imgsz=224)
    info = dataclasses.replace(info, precision=precision)
    if kind == "polydet":
        model = fused_copy(model, precision, device)
    else:
        model = tiny_model().to(device)
        model = model.half() if precision.input_half else model
    example = example_input(224 if kind == "polydet" else 64, precision, device)
    if batch:
        example = example.expand(batch, -1, -1, -1).contiguous()
    md = {META_KEY: info.to_json(), CHANNELS_LAST_KEY: str(cl).lower(), MAX_BATCH_KEY: str(batch or MAX_BATCH),
          **({FIXED_BATCH_KEY: "true"} if batch else {})} if meta else {}
    t0 = time.perf_counter()
    compile_package(model, example, out, md, channels_last=cl, max_batch=None if batch else MAX_BATCH)
    print(f"compiled {name} in {time.perf_counter() - t0:.1f} s: {out.stat().st_size} bytes", flush=True)


def load_variant(name: str, pkg: Path, weights: str, via: str) -> None:
    """Stages printed as they are reached: a crash's log says how far it got."""
    import faulthandler

    faulthandler.enable()
    import torch

    lib = os.environ.get("POLYDET_SEGV_LIB")
    if lib:
        import ctypes

        ctypes.CDLL(lib).polydet_install()
    kind, device, prec, _, batch, cl = VARIANTS[name]
    dtype = torch.float16 if prec == "fp16" else torch.float32
    print("stage: metadata", {k: v[:60] for k, v in _zip_meta(pkg).items()}, flush=True)
    if device == "cuda":
        torch.cuda.init()
    if via == "after-gpu-decode":  # the crashed pytest process had run torchvision's nvJPEG decode first
        import io

        import torchvision
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (640, 480), (90, 160, 30)).save(buf, "JPEG")
        data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        imgs = torchvision.io.decode_jpeg([data, data], device="cuda")
        torch.cuda.synchronize()
        print(f"stage: torchvision decoded {len(imgs)} JPEGs on the GPU", flush=True)
    print(f"stage: construct via {via}", flush=True)
    if via == "backend":
        sys.path.insert(0, str(ROOT / "src"))
        from polydet.backends import load_backend

        model = load_backend(pkg, device=device)
    else:
        from torch._inductor import aoti_load_package

        index = torch.cuda.current_device() if device == "cuda" and via != "default-index" else -1
        model = aoti_load_package(str(pkg), device_index=index)  # -1: what the backend passed until now
    print("stage: constructed", flush=True)
    size = 224 if kind == "polydet" else 64
    fmt = torch.channels_last if cl else torch.contiguous_format
    for n in ([batch] if batch else [1, 7, 64]):
        x = _inputs(n, size).to(device)
        with torch.inference_mode():
            out = model(x.to(dtype).contiguous(memory_format=fmt) if via != "backend" else x)
        out = (out[0] if isinstance(out, (list, tuple)) else out).float()
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"stage: ran batch {n} -> {tuple(out.shape)}, finite {bool(out.isfinite().all())}", flush=True)
        if kind == "polydet":
            _parity(x, out, weights)
    print("LOAD OK", flush=True)


def _inputs(n: int, size: int):
    import torch

    g = torch.Generator().manual_seed(n)
    return torch.rand(n, 3, size, size, generator=g)


def _parity(x, out, weights: str) -> None:
    """The package's output against the unfused fp32 eager model (TOLERANCES' fp16 and tf32 rows: 1 px, 0.01)."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from polydet.export.common import load_or_build

    model, _ = load_or_build(weights, imgsz=224)
    with torch.inference_mode():
        ref = model.to(out.device).eval()(x.to(out.device)).float()
    d = float((out[..., :8] - ref[..., :8]).abs().max()), float((out[..., 8:] - ref[..., 8:]).abs().max())
    print(f"stage: parity vs eager: corners {d[0]:.4f} px, scores {d[1]:.5f}", flush=True)
    if not (d[0] <= 1.0 and d[1] <= 0.01):
        raise SystemExit(f"parity failed: {d}")


def _zip_meta(pkg: Path) -> dict:
    with zipfile.ZipFile(pkg) as z:
        names = sorted(n for n in z.namelist() if n.endswith("wrapper_metadata.json"))
        return json.loads(z.read(names[0])) if names else {}


# -- the orchestrator ---------------------------------------------------------------------------------------
def clean_env(env: dict) -> dict:
    """``env`` without step 1's unpacked wheels (nvImageCodec's CUDA libraries) on its search paths."""
    out = dict(env)
    for key in ("LD_LIBRARY_PATH", "PYTHONPATH"):
        parts = [p for p in out.get(key, "").split(":") if p and "gb_site" not in p]
        out[key] = ":".join(parts)
    return out


def segv_lib() -> str | None:
    """The SIGSEGV stack printer, built with the system C compiler (None where there is none)."""
    src, lib = WORK / "segv.c", WORK / "libsegv.so"
    src.write_text(SEGV_C)
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            r = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], capture_output=True,
                               text=True)
            if r.returncode == 0:
                return str(lib)
            print(f"{cc} could not build the SIGSEGV stack printer: {r.stderr[-300:]}", flush=True)
    return None


def child(args: list[str], env: dict, timeout: float, log: Path) -> dict:
    t0 = time.perf_counter()
    with log.open("w") as f:
        try:
            rc = subprocess.run([sys.executable, __file__, *args], stdout=f, stderr=subprocess.STDOUT, env=env,
                                timeout=max(5.0, timeout)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = log.read_text(errors="replace")
    stages = [ln for ln in text.splitlines() if ln.startswith(("stage:", "compiled", "LOAD OK"))]
    native = text[text.find("[native stack]"):text.find("[native stack end]")] if "[native stack]" in text else ""
    return {"rc": rc, "signal": -rc if isinstance(rc, int) and rc < 0 else None, "s": round(time.perf_counter() - t0, 1),
            "last_stage": stages[-1] if stages else None, "native_stack": native.splitlines()[:40],
            "tail": text.strip().splitlines()[-8:], "log": str(log)}


def run_variant(name: str, args, env: dict, lib: str | None, deadline: float, rows: dict) -> None:
    d = WORK / name
    d.mkdir(parents=True, exist_ok=True)
    pkg = d / f"{name}.pt2"
    cenv = {**clean_env(env), "TORCHINDUCTOR_CACHE_DIR": str(d / "cache"), "TORCHINDUCTOR_COMPILE_THREADS": "4"}
    row = rows[name] = {"variant": name, "compile": child(["compile", name, str(pkg), "--weights", args.weights],
                                                          cenv, min(args.compile_timeout, deadline - time.time()),
                                                          d / "compile.log")}
    print(f"{name}: compile {row['compile']['rc']} in {row['compile']['s']} s", flush=True)
    if row["compile"]["rc"] != 0:
        return
    lenv = {**clean_env(env), **({"POLYDET_SEGV_LIB": lib} if lib else {})}
    step_env = {**env, **({"POLYDET_SEGV_LIB": lib} if lib else {})}
    loads = [("torch", lenv)] + ([("default-index", lenv), ("backend", step_env), ("after-gpu-decode", lenv)]
                                 if name == SHIPPED else [])
    threads = [threading.Thread(target=load_once, args=(name, pkg, via, e, args, deadline, row), daemon=True)
               for via, e in loads]  # side by side: each its own process, the GPU takes them all
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def load_once(name: str, pkg: Path, via: str, env: dict, args, deadline: float, row: dict) -> None:
    r = child(["load", name, str(pkg), "--via", via, "--weights", args.weights], env,
              min(args.load_timeout, deadline - time.time()), pkg.parent / f"load_{via}.log")
    r["ok"] = r["rc"] == 0 and any("LOAD OK" in ln for ln in r["tail"])
    row[f"load_{via}"] = r
    print(f"{name}: load via {via}: {'OK' if r['ok'] else 'FAILED'} (rc {r['rc']}, {r['s']} s, last: "
          f"{r['last_stage']})" + "".join(f"\n    {ln}" for ln in r["native_stack"][:24]), flush=True)


def linking(pkg: Path) -> dict:
    """The package's files, and how its compiled library links (which libcuda, libtorch, RUNPATH)."""
    out: dict = {}
    with zipfile.ZipFile(pkg) as z, tempfile.TemporaryDirectory() as t:
        out["files"] = [f"{i.filename} {i.file_size}" for i in z.infolist()]
        sos = [n for n in z.namelist() if n.endswith(".so")]
        for n in sos[:1]:
            so = z.extract(n, t)
            for tool in (["ldd", so], ["readelf", "-d", so]):
                if shutil.which(tool[0]):
                    r = subprocess.run(tool, capture_output=True, text=True)
                    out[tool[0]] = [ln.strip() for ln in (r.stdout + r.stderr).splitlines()
                                    if tool[0] == "ldd" or any(k in ln for k in ("NEEDED", "PATH", "SONAME"))]
    return out


def environment() -> dict:
    import torch

    cmds = {"nvcc": ["nvcc", "--version"], "cxx": ["c++", "--version"], "libcuda": ["ldconfig", "-p"]}
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "CUDA_HOME": os.environ.get("CUDA_HOME"),
           "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH"),
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for k, cmd in cmds.items():
        if shutil.which(cmd[0]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            lines = r.stdout.splitlines()
            env[k] = [ln.strip() for ln in lines if "libcuda.so" in ln] if k == "libcuda" else lines[:1] + lines[-1:]
    return env


def orchestrate(args) -> int:
    deadline = time.time() + args.budget
    WORK.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else DEFAULT
    report: dict = {"environment": environment(), "names": names, "variants": {}}
    lib = segv_lib()
    report["segv_stack_printer"] = bool(lib)
    threads = [threading.Thread(target=run_variant, args=(n, args, dict(os.environ), lib, deadline,
                                                          report["variants"]), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.time() + 5))
    shipped = WORK / SHIPPED / f"{SHIPPED}.pt2"
    if shipped.exists():
        report["shipped_linking"] = linking(shipped)
    report["best"] = pick_best(report["variants"], Path(args.best))
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    (WORK / "report.json").write_text(json.dumps(report, indent=1, default=str))  # for step 2, on the device
    print(summary(report), flush=True)
    return 0 if report["best"] else 1


def pick_best(rows: dict, best: Path) -> str | None:
    for name in BEST_ORDER:
        r = rows.get(name, {})
        if r.get("load_torch", {}).get("ok"):
            best.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(WORK / name / f"{name}.pt2", best)
            return name
    return None


def summary(report: dict) -> str:
    lines = ["", "variant | compile | load (clean env) | device_index -1 | via backend (caller's env) | after a GPU decode"]
    for name in report["names"]:
        r = report["variants"].get(name)
        if r is None:
            lines.append(f"{name} | not run (time)")
            continue
        c = r["compile"]
        cells = " | ".join(_cell(r, f"load_{v}") for v in ("torch", "default-index", "backend", "after-gpu-decode"))
        lines.append(f"{name} | rc {c['rc']}, {c['s']} s | {cells}")
    lines.append(f"best (copied): {report['best']}")
    return "\n".join(lines)


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    r = row[key]
    return "OK" if r["ok"] else f"rc {r['rc']} after '{(r['last_stage'] or '')[:40]}': {(r['tail'] or [''])[-1][:90]}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--best", default="/tmp/gb/aoti.pt2")
    r.add_argument("--budget", type=float, default=320.0, help="seconds for everything")
    r.add_argument("--compile-timeout", type=float, default=260.0)
    r.add_argument("--load-timeout", type=float, default=90.0)
    r.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    for name in ("compile", "load"):
        s = sub.add_parser(name)
        s.add_argument("variant", choices=list(VARIANTS))
        s.add_argument("pkg", type=Path)
        if name == "load":
            s.add_argument("--via", choices=["torch", "default-index", "backend", "after-gpu-decode"], default="torch")
    for s in sub.choices.values():
        s.add_argument("--weights", default=str(ROOT / "weights/polydet_main_area.pt"))
    args = p.parse_args(argv)
    if args.what == "compile":
        compile_variant(args.variant, args.pkg, args.weights)
        return 0
    if args.what == "load":
        load_variant(args.variant, args.pkg, args.weights, args.via)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
