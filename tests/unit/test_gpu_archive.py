"""`polydet archive --gpu` where there is no GPU: a clear error before anything is exported (the archive's
AOTInductor package is compiled for the serving GPU; the device run builds one: scripts/gpu_serving_bench.sh)."""

import pytest
import torch

from polydet.serving.archive import GPU_BATCHING, GPU_FORMATS, VARIANTS, main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_gpu_archive_refused_without_cuda(tmp_path, capsys):
    assert main(["--gpu", "--weights", "random", "--store", str(tmp_path / "s"), "--build", str(tmp_path / "b")]) == 2
    assert "--gpu compiles for this machine's GPU and there is none" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_gpu_defaults_are_formats_the_archiver_knows():
    from polydet.export import FORMATS

    assert GPU_FORMATS and all(f in FORMATS or f in VARIANTS for f in GPU_FORMATS)
    assert "aoti_fp16" in VARIANTS and VARIANTS["aoti_fp16"][0] == "aoti"  # offered, not the default (yet)
    assert GPU_BATCHING.min_workers == GPU_BATCHING.max_workers == 10 and GPU_BATCHING.batch_size == 16
