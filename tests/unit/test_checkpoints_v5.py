"""Checkpoints of the polygon YOLOv5 training repository (v5.0 layout, pickled modules), issue 19.

The oracle is ``polygon_repo_fakes``: classes named and shaped like that repository's, saved the way its
training script saves them; their own forward pass on the saved (fp16) weights is what polydet must give.
"""

from __future__ import annotations

import builtins
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import polygon_repo_fakes as fakes
from polygon_repo_fakes import UCAS_ANCHORS, repo_yaml, save_training_run
from polydet.errors import ModelLoadError
from polydet.model import PolygonYOLO, load_model
from polydet.model.unpickle import Stub, UnsafeCheckpointError, resolve_global

def _forward(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("cfg", ["polygon_yolov5s_v5", "polygon_yolov5m_v5", "polygon_yolov5l_v5",
                                 "polygon_yolov5x_v5", "polygon_yolov5s", "polygon_yolov5n"])
def test_shipped_yamls_build_what_the_training_code_builds(cfg):
    with torch.device("meta"), fakes.installed():  # shapes only: the x model has 87 M parameters
        theirs = fakes.Polygon_Model(repo_yaml(cfg))
        ours = PolygonYOLO(cfg)
    assert ours.num_params == sum(p.numel() for p in theirs.parameters())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k.replace("model.24", "det").replace("model.", "yolobody."): v.shape
        for k, v in theirs.state_dict().items()}
    assert ours.det.strides == (8.0, 16.0, 32.0) and tuple(theirs.stride.shape) == (3,)


@pytest.mark.parametrize("cfg,params", [("polygon_yolov5s_v5", 7_276_605), ("polygon_yolov5s", 7_235_389),
                                        ("polygon_yolov5n", 1_872_157)])
def test_parameter_counts_are_yolov5s_published_ones(cfg, params):
    """With nc=76 the polygon head has COCO's 255 outputs per level: YOLOv5's own model summaries."""
    with torch.device("meta"):
        assert PolygonYOLO(cfg, nc=76).num_params == params


@pytest.mark.slow  # ~10-30 s on 2 CPU cores: two yolov5s forward passes at 1024
def test_v5_checkpoint_gives_the_training_codes_output_at_1024(tmp_path):
    """polygon-yolov5s for UCAS-AOD as its yaml describes it (2 classes, its anchors, 1024 px)."""
    path, model, ema = save_training_run(tmp_path / "polygon_best.pt", repo_yaml("polygon_yolov5s_v5", anchors=UCAS_ANCHORS))
    fakes.CALLS.clear()
    with fakes.installed():  # importable, as in the user's training tree: still never imported nor run
        loaded, info = load_model(path)
    assert fakes.CALLS == []
    assert info.names == ["plane", "car"] and info.imgsz == 640 and info.stride == 32
    assert loaded.num_params == 7_077_027
    assert loaded.yaml["anchors"] == [[float(v) for v in a] for a in UCAS_ANCHORS]
    # fp16 weights of the ema, cast exactly to fp32
    w = loaded.yolobody[0].conv.conv.weight
    assert w.dtype == torch.float32 and torch.equal(w, ema.model[0].conv.conv.weight.half().float())
    x = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    out, ref = _forward(loaded.eval(), x), fakes.reference(ema, x)
    assert out.shape == ref.shape == (1, 3 * (128 * 128 + 64 * 64 + 32 * 32), 11)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    assert not torch.equal(w, model.model[0].conv.conv.weight.half().float())  # the ema, not the raw model


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # the legacy format saves class sources
@pytest.mark.parametrize("legacy", [False, True])
def test_stripped_final_checkpoint_uses_model_and_legacy_format_loads(tmp_path, legacy):
    d = repo_yaml("polygon_yolov5s_v5", width=0.25)
    path, model, ema = save_training_run(tmp_path / "best.pt", d, seed=5, ema=False, legacy=legacy)
    assert ema is None
    loaded, _ = load_model(path)
    x = torch.rand(2, 3, 160, 96, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_forward(loaded.eval(), x), fakes.reference(model, x), rtol=1e-6, atol=1e-5)
    assert "models" not in sys.modules


def test_v6_layout_checkpoint_without_anchor_grid_buffer(tmp_path):
    """ultralytics v6.x layout (6x6 stem, SPPF; the head keeps only `anchors`), class `Model`, its opt."""
    d = repo_yaml("polygon_yolov5n", anchors=UCAS_ANCHORS)
    path, _, ema = save_training_run(tmp_path / "v6.pt", d, seed=7, cls=fakes.Model, anchor_grid_buffer=False,
                                     extra={"opt": {"imgsz": 320, "epochs": 300}, "date": "2026-01-01"})
    assert "anchor_grid" not in ema.model[-1].state_dict()
    loaded, info = load_model(path)
    assert info.imgsz == 320
    assert loaded.det.anchor_grid.view(3, -1).tolist() == [[float(v) for v in a] for a in UCAS_ANCHORS]
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(_forward(loaded.eval(), x), fakes.reference(ema, x), rtol=1e-6, atol=1e-5)


def test_bottleneckcsp_and_dwconv_layers(tmp_path):
    """Older v5-era yamls (BottleneckCSP) load too; their BatchNorm + LeakyReLU join matches."""
    d = repo_yaml("polygon_yolov5s_v5", width=0.25)
    for row in d["backbone"] + d["head"]:
        if row[2] == "C3":
            row[2] = "BottleneckCSP"
    path, _, ema = save_training_run(tmp_path / "csp.pt", d, seed=9)
    loaded, _ = load_model(path)
    assert type(loaded.yolobody[2]).__name__ == "BottleneckCSP"
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_forward(loaded.eval(), x), fakes.reference(ema, x), rtol=1e-6, atol=1e-5)


class Payload:
    """Pickles as a call of ``fn(arg)``: what a hostile checkpoint does."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _payloads(marker):
    return [(os.system, f"touch {marker}"), (builtins.eval, f"open({str(marker)!r}, 'w').close()"),
            (subprocess.call, ["touch", str(marker)])]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["os.system", "builtins.eval", "subprocess.call"])
def test_unknown_globals_are_refused_and_never_run(tmp_path, which):
    marker = tmp_path / "pwned"
    fn, arg = _payloads(marker)[which]
    name = f"{fn.__module__}.{fn.__qualname__}"  # os.system pickles as posix.system on Linux
    d = repo_yaml("polygon_yolov5n", width=0.125)
    with fakes.installed():
        model = fakes.Polygon_Model(d)
        ckpt = fakes.training_checkpoint(model, copy.deepcopy(model), ["a", "b"])
        ckpt["ema"].model[3].hook = Payload(fn, arg)
        ckpt["wandb_id"] = Payload(fn, arg)
        torch.save(ckpt, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_model(tmp_path / "evil.pt")
    assert isinstance(e.value, ModelLoadError)
    assert f"  {name} at checkpoint['ema'].model.3.hook, checkpoint['wandb_id']" in str(e.value)
    assert not marker.exists()
    with fakes.installed():  # control: an ordinary load does run the payload
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


def test_what_the_importer_maps():
    refused = []
    assert issubclass(resolve_global("models.yolo", "Polygon_Model", refused), Stub)
    assert issubclass(resolve_global("models.common", "C3", refused), Stub)
    assert issubclass(resolve_global("models.experimental", "MixConv2d", refused), Stub)
    assert issubclass(resolve_global("utils.activations", "Hardswish", refused), Stub)
    assert issubclass(resolve_global("torch.nn.modules.conv", "Conv2d", refused), Stub)
    assert resolve_global("torch._utils", "_rebuild_tensor_v2", refused) is torch._utils._rebuild_tensor_v2
    assert resolve_global("__builtin__", "set", refused) is set  # protocol-2 spelling
    assert resolve_global("torch", "float16", refused) is torch.float16
    assert resolve_global("numpy", "dtype", refused) is np.dtype
    assert refused == []
    for module, name in [("os", "system"), ("builtins", "eval"), ("torch.nn.modules.conv", "os"),
                         ("torch", "load"), ("builtins", "getattr"), ("torch._utils", "_load_from_bytes")]:
        stub = resolve_global(module, name, refused)
        assert issubclass(stub, Stub) and stub.refused
    assert refused == ["os.system", "builtins.eval", "torch.nn.modules.conv.os", "torch.load", "builtins.getattr",
                       "torch._utils._load_from_bytes"]


def test_differences_from_polydets_modules_are_named_by_path(tmp_path):
    d = repo_yaml("polygon_yolov5n", width=0.125)
    with fakes.installed():
        model = fakes.Polygon_Model(d)
        model.model[0].act = torch.nn.Hardswish()  # an older YOLOv5 activation
        model.model[1].bn.eps = 1e-5
        torch.save(fakes.training_checkpoint(model, None, ["a", "b"]), tmp_path / "odd.pt")
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "odd.pt")
    msg = str(e.value)
    assert "model.0.act: checkpoint has torch.nn.modules.activation.Hardswish, polydet builds SiLU" in msg
    assert "model.1.bn.eps: checkpoint 1e-05, polydet builds 0.001" in msg


def test_axis_aligned_detector_is_refused(tmp_path):
    path, _, _ = save_training_run(tmp_path / "boxes.pt", repo_yaml("polygon_yolov5n", width=0.125), corners=False)
    with pytest.raises(ModelLoadError, match="Polygon_Detect head with 7 outputs per anchor for nc=2: an axis-aligned"):
        load_model(path)


def test_seed_state_dict_of_a_v5_model_finds_its_shipped_cfg(tmp_path):
    torch.manual_seed(4)
    m = PolygonYOLO("polygon_yolov5s_v5").eval()
    torch.save(m.state_dict(), tmp_path / "v5.pth")
    loaded, _ = load_model(tmp_path / "v5.pth")
    assert type(loaded.yolobody[0]).__name__ == "Focus" and loaded.yaml["width_multiple"] == 0.5
    x = torch.rand(1, 3, 96, 96)
    torch.testing.assert_close(_forward(loaded, x), _forward(m, x), rtol=0, atol=0)


def test_layers_polydet_does_not_build_and_torchscript_files_are_named(tmp_path):
    d = repo_yaml("polygon_yolov5n", width=0.125)
    with fakes.installed():
        model = fakes.Polygon_Model(d)
        model.yaml["backbone"][8][2] = "C3TR"  # the transformer C3 of the v5.0 repository's models/common.py
        torch.save(fakes.training_checkpoint(model, None, ["a", "b"]), tmp_path / "tr.pt")
    with pytest.raises(ModelLoadError, match="cannot build the model its yaml describes: layer 8: unknown module 'C3TR'"):
        load_model(tmp_path / "tr.pt")
    torch.jit.trace(torch.nn.Conv2d(3, 4, 1), torch.zeros(1, 3, 8, 8)).save(str(tmp_path / "ts.pt"))
    with pytest.raises(ModelLoadError, match="is a TorchScript archive, not a checkpoint"):
        load_model(tmp_path / "ts.pt")


def test_a_module_tree_with_a_cycle_is_an_error_not_a_hang(tmp_path):
    d = repo_yaml("polygon_yolov5n", width=0.125)
    with fakes.installed():
        model = fakes.Polygon_Model(d)
        ckpt = fakes.training_checkpoint(model, None, ["a", "b"])
        ckpt["model"].model[2]._modules["loop"] = ckpt["model"].model  # pickled by reference: a cycle
        torch.save(ckpt, tmp_path / "cycle.pt")
    with pytest.raises(ModelLoadError, match=r"module model\.2\.loop contains itself: not a model"):
        load_model(tmp_path / "cycle.pt")
