"""pixel_shuffle, pixel_unshuffle and resize of _core against PyTorch.

Shuffles and nearest resizing move values, so they must be equal. Bilinear and
bicubic follow PyTorch's float coordinates (FMA-contracted as its build is)
and differ from torch float32 only in the order of the sums: within 2e-6 on
N(0, 1) data (measured 1.1e-6); from float64 PyTorch, whose coordinates are
exact, within 5e-5 (measured 2.5e-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from op_testing import LEVELS, border_is_zero, empty, feature, random
from sparsr import _core

torch = pytest.importorskip("torch", reason="the references are PyTorch's")
F = torch.nn.functional

MODES = [("nearest", False), ("bilinear", False), ("bilinear", True), ("bicubic", False),
         ("bicubic", True)]
# (input H, W) -> (output H, W): up, down, equal, to and from 1 pixel, odd.
SIZES = [((1, 1), (3, 5)), ((5, 7), (10, 14)), ((5, 7), (15, 21)), ((7, 9), (3, 4)),
         ((6, 6), (6, 6)), ((4, 5), (1, 1)), ((1, 7), (4, 17)), ((33, 17), (50, 40)),
         ((3, 100), (7, 201)), ((100, 12), (37, 41))]
# 1.1 on 5 pixels gives 5 again: PyTorch then copies bilinear rows but still
# maps nearest and bicubic with 1 / 1.1.
SCALES = [2.0, 3.0, 4.0, 0.5, 1.5, 1.1, 2.5, 0.3, 1.7]


def torch_resize(x, mode, align_corners, dtype, **size_or_scale):
    t = torch.from_numpy(x)[None].to(dtype)
    ac = align_corners if mode != "nearest" else None
    return F.interpolate(t, mode=mode, align_corners=ac, **size_or_scale)[0].double().numpy()


def resized(x, out_hw, mode, align_corners, scale=0.0):
    dst = empty((x.shape[0], *out_hw))
    _core.resize(feature(x), dst, mode, align_corners, scale_h=scale, scale_w=scale)
    return dst


def check_against_torch(got, x, mode, align_corners, **size_or_scale):
    want32 = torch_resize(x, mode, align_corners, torch.float32, **size_or_scale)
    want64 = torch_resize(x, mode, align_corners, torch.float64, **size_or_scale)
    assert got.shape == want32.shape
    if mode == "nearest":
        np.testing.assert_array_equal(got, want32)
        return
    np.testing.assert_allclose(got, want32, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, want64, rtol=0, atol=5e-5)


@pytest.mark.parametrize("mode,align_corners", MODES)
@pytest.mark.parametrize("size_in,size_out", SIZES)
def test_resize_to_a_size(mode, align_corners, size_in, size_out):
    x = random(np.random.default_rng(SIZES.index((size_in, size_out))), (2, *size_in))
    out = resized(x, size_out, mode, align_corners)
    check_against_torch(out.numpy(), x, mode, align_corners, size=size_out)
    assert border_is_zero(out)


@pytest.mark.parametrize("mode,align_corners", MODES)
@pytest.mark.parametrize("scale", SCALES)
def test_resize_by_a_scale_maps_with_its_inverse(mode, align_corners, scale):
    rng = np.random.default_rng(SCALES.index(scale))
    for size in [(5, 7), (7, 9), (1, 1), (13, 31), (40, 3)]:
        out_hw = (math.floor(size[0] * scale), math.floor(size[1] * scale))
        if min(out_hw) < 1:
            continue
        x = random(rng, (2, *size))
        got = resized(x, out_hw, mode, align_corners, scale).numpy()
        check_against_torch(got, x, mode, align_corners, scale_factor=scale)


# Rows long enough for the vector loops (16 and 8 outputs a vector): whole
# vectors and tails, x2 / x4 / x1.5, shrinking past a half (the taps of a
# vector then span more than two vectors: the scalar loop), near that limit
# (both kinds in one row: 147 for bilinear, 158 and 166 for bicubic at 16 and
# 8 a vector), one column, one pixel and equal sizes.
WIDE_SIZES = [((5, 640), (10, 1280)), ((3, 33), (13, 133)), ((4, 50), (6, 75)),
              ((9, 300), (20, 137)), ((9, 300), (4, 147)), ((9, 300), (3, 158)),
              ((9, 300), (5, 166)), ((2, 17), (40, 1)), ((1, 1), (2, 37)), ((6, 40), (6, 40))]


def resized_at(isa, x, out_hw, mode, align_corners, scale=0.0):
    dst = empty((x.shape[0], *out_hw))
    _core.resize(feature(x), dst, mode, align_corners, scale_h=scale, scale_w=scale, isa=isa)
    return dst


def check_wide_against_torch(got, x, mode, align_corners, **size_or_scale):
    """As check_against_torch, but the float coordinates of rows 1000 pixels
    long are off the exact ones by up to about 1e-4 pixel (PyTorch's as ours),
    so float64 PyTorch is only a sanity check here."""
    want32 = torch_resize(x, mode, align_corners, torch.float32, **size_or_scale)
    want64 = torch_resize(x, mode, align_corners, torch.float64, **size_or_scale)
    assert got.shape == want32.shape
    if mode == "nearest":
        np.testing.assert_array_equal(got, want32)
        return
    np.testing.assert_allclose(got, want32, rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, want64, rtol=0, atol=1e-3)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("mode,align_corners", MODES)
@pytest.mark.parametrize("size_in,size_out", WIDE_SIZES)
def test_resize_at_every_isa_level(isa, mode, align_corners, size_in, size_out):
    x = random(np.random.default_rng(WIDE_SIZES.index((size_in, size_out))), (2, *size_in))
    out = resized_at(isa, x, size_out, mode, align_corners)
    check_wide_against_torch(out.numpy(), x, mode, align_corners, size=size_out)
    assert border_is_zero(out)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("mode,align_corners", MODES)
@pytest.mark.parametrize("scale", [2.0, 3.0, 4.0, 0.5])
def test_resize_by_a_scale_at_every_isa_level(isa, mode, align_corners, scale):
    x = random(np.random.default_rng(7), (3, 21, 45))
    out_hw = (math.floor(21 * scale), math.floor(45 * scale))
    got = resized_at(isa, x, out_hw, mode, align_corners, scale).numpy()
    check_against_torch(got, x, mode, align_corners, scale_factor=scale)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_large_outputs_stored_past_the_caches(isa, mode):
    # More than 16 MB of output is streamed (aligned vectors from a row's
    # first aligned float); an odd width leaves a head and a tail in each row.
    x = random(np.random.default_rng(3), (1, 50, 75))
    out = resized_at(isa, x, (2101, 2101), mode, False)
    check_wide_against_torch(out.numpy(), x, mode, False, size=(2101, 2101))
    assert border_is_zero(out)


def test_resize_refuses_an_unknown_isa_level():
    x = feature(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown ISA level 'sse9'"):
        _core.resize(x, empty((1, 8, 8)), "bilinear", isa="sse9")


def test_resize_refusals():
    x = feature(np.zeros((2, 4, 4), np.float32))
    cases = [
        (lambda: _core.resize(x, empty((3, 8, 8)), "bilinear"), "channel counts differ"),
        (lambda: _core.resize(x, empty((2, 8, 8)), "area"), "unknown resize mode 'area'"),
        (lambda: _core.resize(x, empty((2, 8, 8)), "nearest", True),
         "align_corners applies to bilinear and bicubic"),
        (lambda: _core.resize(x, empty((2, 8, 8)), "bilinear", scale_h=-2.0),
         "scales must be positive"),
        (lambda: _core.resize(x, x, "bilinear"), "must not share planes"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("c,h,w", [(1, 1, 1), (2, 3, 7), (3, 5, 1), (1, 4, 17)])
def test_pixel_shuffle_round_trip_matches_torch(factor, c, h, w):
    rng = np.random.default_rng(factor)
    x = random(rng, (c * factor * factor, h, w))
    shuffled = empty((c, h * factor, w * factor))
    _core.pixel_shuffle(feature(x), shuffled, factor)
    want = F.pixel_shuffle(torch.from_numpy(x)[None], factor)[0].numpy()
    np.testing.assert_array_equal(shuffled.numpy(), want)
    assert border_is_zero(shuffled)
    back = empty(x.shape)
    _core.pixel_unshuffle(shuffled, back, factor)
    np.testing.assert_array_equal(back.numpy(), x)
    np.testing.assert_array_equal(
        back.numpy(), F.pixel_unshuffle(torch.from_numpy(want)[None], factor)[0].numpy())


def test_shuffle_refusals():
    x = feature(np.zeros((8, 3, 5), np.float32))
    cases = [
        (lambda: _core.pixel_shuffle(x, empty((4, 6, 10)), 2),
         r"factor 2 maps \(8, 3, 5\) to \(2, 6, 10\), not \(4, 6, 10\)"),
        (lambda: _core.pixel_shuffle(x, empty((1, 9, 15)), 3),
         r"8 channels do not divide by factor\^2 = 9"),
        (lambda: _core.pixel_shuffle(x, empty((8, 3, 5)), 0), "at least 1"),
        (lambda: _core.pixel_shuffle(x, x, 1), "must not share planes"),
        (lambda: _core.pixel_unshuffle(x, empty((32, 1, 2)), 2),
         r"factor 2 does not divide the input size \(8, 3, 5\)"),
        (lambda: _core.pixel_unshuffle(feature(np.zeros((1, 4, 4), np.float32)),
                                       empty((4, 2, 3)), 2), "not \\(4, 2, 3\\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
