"""ONNX graph passes (export/passes.py): each keeps the outputs of the graph it rewrote, is recorded in
the artifact's metadata, and a rewrite that changes the outputs is refused."""

import json

import numpy as np
import onnx
import pytest

from polydet.backends import load_backend
from polydet.backends.base import META_KEY
from polydet.errors import ExportError
from polydet.export import PASSES, export
from polydet.export import passes as P
from polydet.export.common import fixed_inputs
from polydet.meta import ModelInfo

pytest.importorskip("onnxslim")
pytest.importorskip("onnxsim")
pytest.importorskip("onnxoptimizer")


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    d = tmp_path_factory.mktemp("passes")
    out, _ = export("random", "onnx", out=d / "plain.onnx", imgsz=64)
    return out


def _meta(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.parametrize("name", ["slim", "simplify", "optimize"])
def test_each_pass_keeps_outputs_and_is_recorded(tmp_path, plain, name):
    out, diff = export("random", "onnx", out=tmp_path / f"{name}.onnx", imgsz=64, passes=[name])
    assert diff["corners_px"] <= 0.05 and diff["scores"] <= 1e-3  # the eager check still runs after passes
    x = fixed_inputs((64, 64)).numpy()
    ref, got = P.run_onnx(plain, x), P.run_onnx(out, x)
    # the oracle is the unoptimised graph: these passes fold and eliminate, they compute the same numbers
    np.testing.assert_allclose(got, ref, atol=P.PASS_TOLERANCE["scores"], rtol=0)
    assert np.abs(got[..., :8] - ref[..., :8]).max() <= P.PASS_TOLERANCE["corners_px"]
    assert list(_meta(out)) == [META_KEY]  # onnxsim's own keys are not left behind
    assert json.loads(_meta(out)[META_KEY])["passes"] == [name]
    assert load_backend(out).info.passes == (name,)
    if name != "optimize":  # onnxoptimizer keeps the shape arithmetic it cannot prove constant
        assert len(onnx.load(str(out)).graph.node) < len(onnx.load(str(plain)).graph.node)


def test_passes_chain_in_order_and_slim_keeps_the_dynamic_batch(tmp_path):
    out, _ = export("random", "onnx", out=tmp_path / "c.onnx", imgsz=64, passes=["slim", "optimize", "simplify"])
    assert load_backend(out).info.passes == ("slim", "optimize", "simplify")
    backend = load_backend(out)
    assert backend.max_batch is None
    assert backend(fixed_inputs((64, 64), batch=3)).shape == (3, 3 * 2 * 2 + 3 * 4 * 4 + 3 * 8 * 8, 11)


def test_a_rewrite_that_changes_the_outputs_is_refused(tmp_path, plain):
    target = tmp_path / "t.onnx"
    target.write_bytes(plain.read_bytes())
    before = target.read_bytes()
    info = load_backend(target).info

    def shift_first_initializer(m):  # a planted numeric change: the last head conv's bias shifted
        init = next(i for i in m.graph.initializer if i.name == "det.m.2.bias")
        arr = onnx.numpy_helper.to_array(init) + 0.01
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return m

    with pytest.raises(ExportError, match=r"graph pass 'planted' changed the outputs beyond"):
        P._rewrite(target, info, "planted", shift_first_initializer)
    assert target.read_bytes() == before  # the artifact is left as it was


def test_a_tool_failure_names_the_pass(tmp_path, plain):
    def boom(m):
        raise RuntimeError("tool exploded")

    with pytest.raises(ExportError, match=r"graph pass 'slim' failed on .*tool exploded"):
        P._rewrite(plain, ModelInfo(imgsz=64), "slim", boom)


def test_every_table_pass_is_a_function_here():
    from polydet.export.formats import CONTRACT_PASSES  # those change the contract: test_output_passes.py

    value_passes = {k: v for k, v in PASSES.items() if k not in CONTRACT_PASSES}
    assert value_passes == {"slim": ".passes:slim", "simplify": ".passes:simplify", "optimize": ".passes:optimize"}
    for name in value_passes:
        assert callable(getattr(P, name))
