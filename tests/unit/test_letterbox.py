import numpy as np
import pytest
import torch

from polydet.ops.letterbox import PAD_VALUE, letterbox, letterbox_shape


@pytest.mark.parametrize("h,w,size,auto,out", [
    (480, 640, 224, False, (224, 224)),
    (480, 640, 224, True, (192, 224)),  # 168 rounded up to a multiple of 32
    (1600, 800, 320, True, (320, 160)),
    (100, 3000, 640, True, (32, 640)),  # 21.3 px tall -> one stride
    (224, 224, 224, True, (224, 224)),
])
def test_output_shapes(h, w, size, auto, out):
    img = np.zeros((h, w, 3), np.uint8)
    res, lb = letterbox(img, size, auto=auto)
    assert res.shape == (*out, 3) and lb.out_shape == out and lb.in_shape == (h, w)


def test_padding_value_and_placement():
    img = np.full((100, 200, 3), 7, np.uint8)
    res, lb = letterbox(img, 224)
    assert lb.scale == pytest.approx(1.12) and lb.pad == (0.0, 56.0)
    assert (res[:56] == PAD_VALUE).all() and (res[56 + 112 :] == PAD_VALUE).all()
    assert (res[56 : 56 + 112] == 7).all()


def test_matches_cv2_inter_linear():
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    res, lb = letterbox(img, 224)
    ref = cv2.resize(img, (224, 168), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(res[28 : 28 + 168], ref)


@pytest.mark.parametrize("auto", [False, True])
@pytest.mark.parametrize("h,w", [(480, 640), (1600, 900), (333, 777), (50, 40)])
def test_round_trip_polygons(h, w, auto):
    rng = np.random.default_rng(h + w)
    polys = rng.uniform(0, 1, (20, 4, 2)) * [w, h]
    _, lb = letterbox(np.zeros((h, w, 3), np.uint8), 320, auto=auto)
    mapped = lb.map(polys)
    assert mapped.min() >= 0 and (mapped[..., 0] <= lb.out_shape[1]).all() and (mapped[..., 1] <= lb.out_shape[0]).all()
    np.testing.assert_allclose(lb.unmap(mapped), polys, atol=1e-9)
    t = torch.from_numpy(mapped)
    torch.testing.assert_close(lb.unmap(t), torch.from_numpy(polys))


def test_unmap_clamps_unless_told_not_to():
    _, lb = letterbox(np.zeros((100, 200, 3), np.uint8), 224)
    outside = np.array([[[-10.0, 0.0], [230.0, 10.0], [100.0, 250.0], [0.0, 0.0]]])
    clamped = lb.unmap(outside)
    assert clamped[..., 0].min() == 0 and clamped[..., 0].max() == 200 and clamped[..., 1].max() == 100
    raw = lb.unmap(outside, clamp=False)
    assert raw[0, 0, 0] == pytest.approx(-10 / 1.12) and raw[0, 2, 1] == pytest.approx((250 - 56) / 1.12)


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of stride"):
        letterbox_shape((10, 10), 225)
    with pytest.raises(ValueError, match="positive"):
        letterbox_shape((0, 10), 224)
