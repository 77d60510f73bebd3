import pytest
import torch

from polydet.errors import ModelLoadError
from polydet.model import PolygonYOLO, load_model, save_checkpoint
from polydet.meta import ModelInfo


@pytest.mark.parametrize("cfg,params,channels", [
    ("polygon_yolov5n", 1_772_035, [16, 32, 64, 128, 256]),
    ("polygon_yolov5n_seed", 1_195_779, [16, 32, 56, 104, 208]),
])
def test_parameter_counts_and_widths(cfg, params, channels):
    m = PolygonYOLO(cfg, nc=2)
    assert m.num_params == params
    assert [m.yolobody[i].conv.out_channels for i in (0, 1, 3, 5, 7)] == channels
    assert len(m.yolobody) == 24


def test_layer_types_follow_v6_layout():
    m = PolygonYOLO("polygon_yolov5n")
    stem = m.yolobody[0].conv
    assert stem.kernel_size == (6, 6) and stem.stride == (2, 2) and stem.padding == (2, 2) and stem.bias is None
    bn = m.yolobody[0].bn
    assert bn.eps == 1e-3 and bn.momentum == 0.03
    assert type(m.yolobody[9]).__name__ == "SPPF" and m.yolobody[9].m.kernel_size == 5
    assert m.yolobody[2].m[0].add is True  # backbone C3 with shortcut
    assert m.yolobody[13].m[0].add is False  # head C3 without


@pytest.mark.parametrize("size,n", [(224, 3087), (640, 25200), (320, 6300)])
def test_eval_output_shape(size, n):
    m = PolygonYOLO("polygon_yolov5n_seed").eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 3, size, size)).shape == (2, n, 11)


def test_head_decode_contract():
    """Rows anchor-major per level, corner = (raw + grid) * stride, sigmoid on obj/cls only."""
    torch.manual_seed(0)
    m = PolygonYOLO("polygon_yolov5n_seed", nc=3)
    x = torch.rand(2, 3, 96, 160)
    m.eval()
    with torch.no_grad():
        m.det.train()  # raw maps, with the same (eval) BatchNorm as the decoded pass
        raw = m(x)
        m.det.eval()
        out = m(x)
    rows = []
    for p, s in zip(raw, (8, 16, 32)):
        b, na, ny, nx, no = p.shape
        assert no == 12
        for a in range(na):
            for gy in range(ny):
                for gx in range(nx):
                    r = p[:, a, gy, gx]
                    xy = (r[:, :8].view(b, 4, 2) + torch.tensor([gx, gy])) * s
                    rows.append(torch.cat([xy.view(b, 8), r[:, 8:].sigmoid()], 1))
    expected = torch.stack(rows, 1)
    assert out.shape == expected.shape == (2, 3 * (12 * 20 + 6 * 10 + 3 * 5), 12)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_fuse_keeps_outputs():
    torch.manual_seed(1)
    m = PolygonYOLO("polygon_yolov5n").eval()
    for mod in m.modules():  # non-trivial BN statistics so the fusion is really exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ref = m(x)
        fused = m.fuse()(x)
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules())
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-3)


def test_polydet_checkpoint_round_trip(tmp_path):
    torch.manual_seed(2)
    m = PolygonYOLO("polygon_yolov5n_seed").eval()
    save_checkpoint(tmp_path / "c.pt", m, ModelInfo(names=["a", "b"], imgsz=320))
    m2, info = load_model(tmp_path / "c.pt")
    assert info.names == ["a", "b"] and info.imgsz == 320
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))


def test_seed_state_dict_loads_with_matching_cfg(tmp_path):
    torch.manual_seed(3)
    m = PolygonYOLO("polygon_yolov5n_seed").eval()
    sd = m.state_dict()
    assert sd["det.anchors"].shape == (3, 3, 2) and sd["det.anchor_grid"].shape == (3, 1, 3, 1, 1, 2)
    assert any(k.startswith("yolobody.23.") for k in sd) and not any(k.startswith("yolobody.24") for k in sd)
    assert {"yolobody.2.cv1.conv.weight", "yolobody.2.m.0.cv2.bn.running_var", "yolobody.9.cv2.conv.weight",
            "det.m.2.bias"} <= set(sd)
    torch.save(sd, tmp_path / "best.pth")
    m2, info = load_model(tmp_path / "best.pth")
    assert info.names == ["page", "photo"] and info.imgsz == 224
    assert m2.yolobody[3].conv.out_channels == 56  # picked the seed cfg, not yolov5n
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))


def test_mismatched_state_dict_error_lists_keys(tmp_path):
    sd = PolygonYOLO("polygon_yolov5n_seed").state_dict()
    del sd["yolobody.4.cv3.bn.bias"]
    sd["yolobody.99.weird"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError) as e:
        load_model(tmp_path / "bad.pth", cfg="polygon_yolov5n_seed")
    msg = str(e.value)
    assert "missing keys (1): yolobody.4.cv3.bn.bias" in msg and "unexpected keys (1): yolobody.99.weird" in msg


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"hello")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(tmp_path / "x.pt")
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.pt")
