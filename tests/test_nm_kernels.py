"""The N:M kernels of csrc/kernels.inc (format "nm") against their scalar twin
and against torch.nn.functional.conv2d on the densified weights: every ISA the
CPU has, every M, several N (1, M, the unrolled patterns of
csrc/nm-patterns.inc and generic ones), odd image sizes, pixel runs that are
not whole rows, input/output channel prefixes, ReLU and residual; and the
patterns the packing must refuse."""

from __future__ import annotations

import numpy as np
import pytest

from sparsr import _core

torch = pytest.importorskip("torch", reason="the reference convolution needs torch")

LEVELS = ["scalar", "avx2", "avx512"]
RTOL = 1e-4


def nm_kernels():
    return [k for k in _core.kernels() if k["format"] == "nm"]


def random_nm_weight(rng, cout, cin, k, n, m, sparse_groups=0.2):
    """OIHW float32 weights with at most n nonzeros in every m input channels:
    most groups keep exactly n, some fewer (the packing pads those). When m
    does not divide cin the last group is short (cin mod m channels)."""
    if cin % m:
        wide = random_nm_weight(rng, cout, -(-cin // m) * m, k, n, m, sparse_groups)
        short = wide[:, cin // m * m:cin]
        # The short group keeps min(n, its width) where it is not a sparser group.
        width = cin % m
        dense = rng.standard_normal((cout, width, k, k)).astype(np.float32) / np.sqrt(cin * k * k)
        order = np.argsort(rng.random(dense.shape), axis=1)
        keep = np.zeros(dense.shape, dtype=bool)
        np.put_along_axis(keep, order, np.arange(width)[None, :, None, None] < min(n, width), 1)
        full = rng.random((cout, 1, k, k)) >= sparse_groups
        short[:] = np.where(full, dense * keep, short)
        return np.ascontiguousarray(wide[:, :cin])
    w = rng.standard_normal((cout, cin // m, m, k, k)).astype(np.float32) / np.sqrt(cin * k * k * n / m)
    order = np.argsort(rng.random(w.shape), axis=2)
    kept = np.where(rng.random((cout, cin // m, 1, k, k)) < sparse_groups,
                    rng.integers(0, n + 1, (cout, cin // m, 1, k, k)), n)
    keep = np.zeros(w.shape, dtype=bool)
    np.put_along_axis(keep, order, np.arange(m)[None, None, :, None, None] < kept, axis=2)
    return (w * keep).reshape(cout, cin, k, k)


def torch_conv(x, w, b, relu=False, residual=None):
    """'same' convolution in float64: (cin, h, w) -> (cout, h, w)."""
    out = torch.nn.functional.conv2d(torch.from_numpy(x[None]).double(),
                                     torch.from_numpy(w).double(),
                                     torch.from_numpy(b).double(), padding=w.shape[-1] // 2)[0]
    if relu:
        out = torch.relu(out)
    if residual is not None:
        out = out + torch.from_numpy(residual).double()
    return out.numpy()


SENTINEL = 7.5  # pixels and channels a call must not write keep this value


def run_layer(layer, x, cout_total, pixels, residual=None, **kw):
    src = _core.Feature.from_numpy(x)
    dst = _core.Feature(cout_total, *x.shape[1:])
    _core.fill(dst.view(), _core.PixelSet.full(*x.shape[1:]), SENTINEL)
    res = _core.Feature.from_numpy(residual) if residual is not None else None
    layer(src.view(), dst.view(), pixels, residual=res.view() if res is not None else None, **kw)
    return dst.numpy()


def assert_close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def skip_unless(isa):
    if not _core.isa_supported(isa):
        pytest.skip(f"this CPU lacks {isa}")


def patterns():
    """(n, m): 1, M and a generic N for every M, plus every unrolled pattern."""
    out = set(_core.nm_unrolled_patterns())
    for m in (4, 8, 16, 32):
        out |= {(1, m), (m, m), (m - 1, m), (m // 2 + 1, m)}
    return sorted(out, key=lambda p: (p[1], p[0]))


# ---------------------------------------------------------------- the table


def test_every_isa_and_ksize_has_an_nm_kernel():
    have = {(k["isa"], k["ksize"]) for k in nm_kernels()}
    assert have == {(isa, k) for isa in LEVELS for k in (1, 3)}


def test_unrolled_patterns_cover_the_required_ones():
    assert {(2, 4), (1, 4), (2, 8), (4, 8), (8, 32), (4, 32)} <= set(_core.nm_unrolled_patterns())


def test_conv2d_exposes_format_n_m_and_kernel():
    w = random_nm_weight(np.random.default_rng(0), 4, 8, 3, 2, 4)
    for isa in LEVELS:
        if not _core.isa_supported(isa):
            continue
        layer = _core.Conv2d(w, None, isa=isa, format="nm", n=2, m=4)
        assert (layer.format, layer.n, layer.m, layer.isa) == ("nm", 2, 4, isa)
        assert layer.kernel == next(k["name"] for k in nm_kernels()
                                    if k["isa"] == isa and k["ksize"] == 3)
    dense = _core.Conv2d(w, None, format="dense")
    assert (dense.n, dense.m) == (0, 0)


# ---------------------------------------------------------------- results


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [3, 1])
@pytest.mark.parametrize("nm", patterns(), ids=lambda p: f"{p[0]}of{p[1]}")
def test_full_image_matches_torch_and_scalar(isa, ksize, nm):
    skip_unless(isa)
    n, m = nm
    rng = np.random.default_rng(n * 100 + m + ksize)
    cin = 2 * m if m < 32 else 64
    cout = 9
    w = random_nm_weight(rng, cout, cin, ksize, n, m)
    b = rng.standard_normal(cout).astype(np.float32)
    layer = _core.Conv2d(w, b, isa=isa, format="nm", n=n, m=m)
    scalar = _core.Conv2d(w, b, isa="scalar", format="nm", n=n, m=m)
    for h, wd in [(1, 1), (3, 17), (37, 53), (2, 300)]:
        x = rng.standard_normal((cin, h, wd)).astype(np.float32)
        pixels = _core.PixelSet.full(h, wd)
        got = run_layer(layer, x, cout, pixels)
        what = f"{layer.kernel} {n}:{m} {ksize}x{ksize} on {h}x{wd}"
        assert_close(got, torch_conv(x, w, b), what + " vs torch")
        if isa != "scalar":
            assert_close(got, run_layer(scalar, x, cout, pixels), what + " vs scalar")


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [3, 1])
@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 4), (4, 8), (5, 8), (2, 16), (16, 16),
                                (8, 32), (4, 32), (1, 32), (31, 32)],
                         ids=lambda p: f"{p[0]}of{p[1]}")
def test_masked_runs_prefixes_relu_residual(isa, ksize, nm):
    """SMSR sparse mode: short runs, a prefix of input channels (one that splits
    a group too) and of output channels; nothing outside is written."""
    skip_unless(isa)
    n, m = nm
    rng = np.random.default_rng(7 * n + m + ksize)
    cin = 3 * m if m < 32 else 64
    cout = 11
    h, wd = 37, 53
    w = random_nm_weight(rng, cout, cin, ksize, n, m)
    b = rng.standard_normal(cout).astype(np.float32)
    layer = _core.Conv2d(w, b, isa=isa, format="nm", n=n, m=m)
    scalar = _core.Conv2d(w, b, isa="scalar", format="nm", n=n, m=m)
    x = rng.standard_normal((cin, h, wd)).astype(np.float32)
    residual = rng.standard_normal((cout, h, wd)).astype(np.float32)
    mask = (rng.random((h, wd)) < 0.3).astype(np.uint8)
    mask[0, :] = 1           # a whole row, from the left edge
    mask[5, 40:] = 1         # a run to the right edge
    mask[:, 0] = 1           # single pixels at the left edge
    pixels = _core.PixelSet.from_mask(mask, h, wd)
    for cin_used, cout_used in [(cin, cout), (m, cout - 3), (m + 1, 5), (cin - 1, 1), (1, cout)]:
        for relu, res in [(False, None), (True, residual)]:
            got = run_layer(layer, x, cout, pixels, residual=res, relu=relu, cin=cin_used,
                            cout=cout_used)
            want = np.full((cout, h, wd), SENTINEL)
            ref = torch_conv(x[:cin_used], w[:cout_used, :cin_used], b[:cout_used], relu,
                             None if res is None else res[:cout_used])
            want[:cout_used][:, mask.astype(bool)] = ref[:, mask.astype(bool)]
            what = (f"{layer.kernel} {n}:{m} cin={cin_used} cout={cout_used} relu={relu} "
                    f"residual={res is not None}")
            assert_close(got, want, what + " vs torch")
            if isa != "scalar":
                want_scalar = run_layer(scalar, x, cout, pixels, residual=res, relu=relu,
                                        cin=cin_used, cout=cout_used)
                assert_close(got, want_scalar, what + " vs scalar")


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [3, 1])
@pytest.mark.parametrize("nm, cin", [((2, 4), 50), ((1, 4), 50), ((2, 4), 25), ((3, 4), 46),
                                     ((2, 4), 30), ((4, 8), 50), ((5, 8), 13), ((2, 8), 9),
                                     ((8, 16), 50), ((2, 16), 17), ((8, 32), 50), ((4, 32), 3),
                                     ((31, 32), 70)],
                         ids=lambda p: f"{p[0]}of{p[1]}" if isinstance(p, tuple) else f"cin{p}")
def test_short_last_group(isa, ksize, nm, cin):
    """M not dividing the input channels (RFDN 50 and 25, RLFN 46, SPAN 28): the
    last group is short and keeps at most N. Whole images and masked runs with
    channel prefixes (one inside the short group) against torch and the scalar twin."""
    skip_unless(isa)
    n, m = nm
    rng = np.random.default_rng(cin * 1000 + n * 10 + m + ksize)
    cout, h, wd = 7, 23, 45
    w = random_nm_weight(rng, cout, cin, ksize, n, m)
    groups = w.reshape(cout, cin, -1)
    for g in range(0, cin, m):
        assert (groups[:, g:g + m] != 0).sum(1).max() <= n
    b = rng.standard_normal(cout).astype(np.float32)
    layer = _core.Conv2d(w, b, isa=isa, format="nm", n=n, m=m)
    scalar = _core.Conv2d(w, b, isa="scalar", format="nm", n=n, m=m)
    x = rng.standard_normal((cin, h, wd)).astype(np.float32)
    full = _core.PixelSet.full(h, wd)
    what = f"{layer.kernel} {n}:{m} {ksize}x{ksize} cin={cin}"
    got = run_layer(layer, x, cout, full)
    assert_close(got, torch_conv(x, w, b), what + " vs torch")
    if isa != "scalar":
        assert_close(got, run_layer(scalar, x, cout, full), what + " vs scalar")
    mask = (rng.random((h, wd)) < 0.4).astype(np.uint8)
    pixels = _core.PixelSet.from_mask(mask, h, wd)
    for cin_used in sorted({cin, cin - 1, min(cin, cin - cin % m + 1), 1}):
        got = run_layer(layer, x, cout, pixels, relu=True, cin=cin_used, cout=cout - 2)
        want = np.full((cout, h, wd), SENTINEL)
        ref = torch_conv(x[:cin_used], w[:cout - 2, :cin_used], b[:cout - 2], relu=True)
        want[:cout - 2][:, mask.astype(bool)] = ref[:, mask.astype(bool)]
        assert_close(got, want, f"{what} cin_used={cin_used} vs torch")
        if isa != "scalar":
            assert_close(got, run_layer(scalar, x, cout, pixels, relu=True, cin=cin_used,
                                        cout=cout - 2), f"{what} cin_used={cin_used} vs scalar")


@pytest.mark.parametrize("isa", LEVELS)
def test_input_channels_from_several_features(isa):
    """Input planes need not be evenly spaced: a concatenation of features."""
    skip_unless(isa)
    rng = np.random.default_rng(3)
    w = random_nm_weight(rng, 6, 16, 3, 2, 8)
    b = rng.standard_normal(6).astype(np.float32)
    layer = _core.Conv2d(w, b, isa=isa, format="nm", n=2, m=8)
    x = rng.standard_normal((16, 9, 40)).astype(np.float32)
    parts = [_core.Feature.from_numpy(x[:5]), _core.Feature.from_numpy(x[5:11]),
             _core.Feature.from_numpy(x[11:])]
    src = _core.Channels.cat([p.view() for p in parts])
    dst = _core.Feature(6, 9, 40)
    layer(src, dst.view(), _core.PixelSet.full(9, 40))
    assert_close(dst.numpy(), torch_conv(x, w, b), f"{layer.kernel} on concatenated inputs")


def test_all_zero_weights_give_the_bias():
    w = np.zeros((3, 8, 3, 3), np.float32)
    b = np.array([1.0, -2.0, 0.5], np.float32)
    for isa in LEVELS:
        if _core.isa_supported(isa):
            layer = _core.Conv2d(w, b, isa=isa, format="nm", n=1, m=4)
            x = np.random.default_rng(0).standard_normal((8, 4, 20)).astype(np.float32)
            got = run_layer(layer, x, 3, _core.PixelSet.full(4, 20))
            assert_close(got, np.broadcast_to(b[:, None, None], got.shape), layer.kernel)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("n, m, cin, match", [
    (5, 4, 8, "1 <= N <= M"),
    (0, 4, 8, "1 <= N <= M"),
    (2, 6, 12, "M in"),
    (2, 64, 64, "M in"),
])
def test_packing_refuses_bad_patterns(n, m, cin, match):
    w = np.zeros((2, cin, 3, 3), np.float32)
    with pytest.raises(ValueError, match=match):
        _core.Conv2d(w, None, format="nm", n=n, m=m)


def test_packing_refuses_a_short_group_over_n():
    """The short last group (channels 48, 49 of 50) keeps at most N too."""
    w = np.zeros((2, 50, 3, 3), np.float32)
    w[1, 48:50, 0, 2] = 1.0
    _core.Conv2d(w, None, format="nm", n=2, m=4)
    with pytest.raises(ValueError, match=r"not 1:4 sparse: output channel 1, input channels 48\.\.49"):
        _core.Conv2d(w, None, format="nm", n=1, m=4)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [3, 1])
def test_packing_refuses_weights_that_are_not_nm(isa, ksize):
    skip_unless(isa)
    rng = np.random.default_rng(1)
    w = random_nm_weight(rng, 4, 16, ksize, 2, 8, sparse_groups=0.0)
    _core.Conv2d(w, None, isa=isa, format="nm", n=2, m=8)  # exactly 2 of 8: accepted
    bad = w.copy()
    group = bad[3, 8:16, ksize - 1, 0]
    group[group == 0] = 0.25  # channels 8..15 of output 3 now hold 8 nonzeros
    with pytest.raises(ValueError, match=r"not 2:8 sparse: output channel 3, input channels 8\.\.15"):
        _core.Conv2d(bad, None, isa=isa, format="nm", n=2, m=8)
    with pytest.raises(ValueError, match="not 1:8 sparse"):
        _core.Conv2d(w, None, isa=isa, format="nm", n=1, m=8)
