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


def test_gpu_defaults_name_a_gpu_format():
    assert all(VARIANTS[f][0] == "aoti" for f in GPU_FORMATS)
    assert GPU_BATCHING.min_workers == GPU_BATCHING.max_workers >= 1
