"""Where does CUDA fp32 differ from the CPU? Trained weights, the export check's fixed inputs.

    python3 scripts/gpu_parity_probe.py      # on the GPU machine (scripts/gpu_tests.sh does not run it)

Prints max |diff| on corners (px) and scores against the eager model on the CPU (fp32, the reference), for
the eager model and the exported TorchScript on CUDA, with TF32 on/off and channels_last on/off.
"""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from polydet.backends import load_backend  # noqa: E402
from polydet.export import export  # noqa: E402
from polydet.export.common import fixed_inputs, load_or_build  # noqa: E402

W = str(Path(__file__).resolve().parents[1] / "weights" / "polydet_main_area.pt")


def d(a, b):
    return f"corners {float((a[..., :8] - b[..., :8]).abs().max()):.2e} px, scores {float((a[..., 8:] - b[..., 8:]).abs().max()):.2e}"


def main():
    model, _ = load_or_build(W)
    model.eval()
    x = fixed_inputs((224, 224))
    with torch.inference_mode():
        ref = model(x).float()
    print("api:", {k: getattr(torch.backends.cudnn, k, None) for k in ("allow_tf32",)},
          getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
          torch.get_float32_matmul_precision())
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export(W, "torchscript", out=Path(tmp) / "c.torchscript", device="cpu", verify=False)
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            for tf32 in (True, False):
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                m = model.to("cuda")
                with torch.inference_mode():
                    e = m(x.cuda()).float().cpu()
                    fused = load_or_build(W)[0].eval().fuse().cuda()(x.cuda()).float().cpu()
                for cl in (False, True):
                    b = load_backend(path, device="cuda", channels_last=cl)
                    outs = [b(x).cpu() for _ in range(3)]  # profiling executor: later runs are optimised
                    print(f"benchmark={bench} tf32={tf32} cl={cl}: eager-cuda {d(e, ref)} | fused-eager-cuda {d(fused, ref)}"
                          f" | ts run1 {d(outs[0], ref)} | ts run3 {d(outs[2], ref)}", flush=True)
                model = model.cpu()


if __name__ == "__main__":
    main()
