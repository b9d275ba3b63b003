"""The CSR (unstructured-sparse, zero-skip) convolution kernels against a plain
float64 convolution, against their scalar twin and against the dense kernel.

Every CSR kernel of the engine's table at every ISA level this CPU has, on odd
sizes, sparsities from none to all, zero output and input channels, channel
prefixes, short runs from a mask, ReLU and residual. Tolerance: 1e-4 of the sum
of absolute products at each output (a relative bound that cancellation cannot
hide behind)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsr import _core

LEVELS = ["scalar", "avx2", "avx512"]
RTOL = 1e-4


def csr_kernels():
    return [k for k in _core.kernels() if k["format"] == "csr"]


def level(isa):
    if not _core.isa_supported(isa):
        pytest.skip(f"this CPU lacks {isa}")
    return isa


def sparse_weights(rng, cout, cin, k, sparsity):
    """Unstructured sparsity: exactly round(sparsity * size) zeros at random places."""
    w = rng.standard_normal((cout, cin, k, k)).astype(np.float32) / np.sqrt(cin * k * k)
    flat = w.reshape(-1)
    flat[rng.permutation(flat.size)[: int(round(sparsity * flat.size))]] = 0.0
    return w


def reference_conv(x, w, b):
    """'Same' convolution in float64 (cin, h, w) -> (cout, h, w), and the sum of
    absolute products at each output (the scale of its rounding error)."""
    cout, cin, k, _ = w.shape
    p = k // 2
    h, wd = x.shape[1:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p)))
    out = np.zeros((cout, h, wd))
    scale = np.zeros((cout, h, wd))
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky:ky + h, kx:kx + wd]
            out += np.einsum("oi,ihw->ohw", w[:, :, ky, kx].astype(np.float64), patch)
            scale += np.einsum("oi,ihw->ohw", np.abs(w[:, :, ky, kx]).astype(np.float64),
                               np.abs(patch))
    if b is not None:
        out += b[:, None, None]
        scale += np.abs(b)[:, None, None]
    return out, scale


def run(layer, x, cout_total, pixels, fill=None, residual=None, **kw):
    fi = _core.Feature.from_numpy(x)
    fo = (_core.Feature.from_numpy(fill) if fill is not None
          else _core.Feature(cout_total, *x.shape[1:]))
    fr = _core.Feature.from_numpy(residual) if residual is not None else None
    layer(fi.view(), fo.view(), pixels, residual=fr.view() if fr is not None else None, **kw)
    return fo.numpy()


def assert_close(got, ref, scale):
    bound = RTOL * (scale + 1e-6)
    bad = np.abs(got - ref) > bound
    assert not bad.any(), (f"{bad.sum()} of {bad.size} outputs off, worst "
                           f"{np.max(np.abs(got - ref) - bound):.3g} beyond the bound")


def test_table_has_csr_at_every_level():
    have = {(k["ksize"], k["isa"]) for k in csr_kernels()}
    assert have == {(k, isa) for k in (1, 3) for isa in LEVELS}


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_layer_picks_the_csr_kernel_of_the_level(isa, ksize):
    level(isa)
    rng = np.random.default_rng(0)
    w = sparse_weights(rng, 4, 3, ksize, 0.5)
    layer = _core.Conv2d(w, None, isa=isa, format="csr")
    entry = next(k for k in csr_kernels() if k["ksize"] == ksize and k["isa"] == isa)
    assert (layer.kernel, layer.format, layer.isa) == (entry["name"], "csr", isa)
    assert layer.nnz == np.count_nonzero(w)
    assert _core.Conv2d(w, None, isa=isa).nnz == np.count_nonzero(w)


SHAPES = [  # (cout, cin, h, w): odd sizes, tile and chunk boundaries, many channels,
    # more outputs than one scratch block, planes 4 KB apart (smaller chunks)
    (3, 2, 1, 1), (5, 3, 3, 17), (7, 9, 37, 53), (20, 13, 4, 16), (17, 64, 3, 200),
    (40, 30, 2, 257), (33, 256, 2, 48), (70, 21, 3, 40), (6, 48, 62, 14)]
SPARSITIES = [0.0, 0.35, 0.7, 0.95, 1.0]


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_csr_matches_reference_twin_and_dense(isa, ksize, sparsity, shape):
    level(isa)
    cout, cin, h, w = shape
    rng = np.random.default_rng(abs(hash((isa, ksize, sparsity, shape))) % 2**32)
    weights = sparse_weights(rng, cout, cin, ksize, sparsity)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    full = _core.PixelSet.full(h, w)
    ref, scale = reference_conv(x, weights, bias)
    got = run(_core.Conv2d(weights, bias, isa=isa, format="csr"), x, cout, full)
    assert_close(got, ref, scale)
    twin = run(_core.Conv2d(weights, bias, isa="scalar", format="csr"), x, cout, full)
    assert_close(got, twin, scale)
    dense = run(_core.Conv2d(weights, bias, isa=isa, format="dense"), x, cout, full)
    assert_close(got, dense, scale)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_zero_output_and_input_channels(isa, ksize):
    """A zero output channel is its bias; a zero input channel is never read
    (NaN in it does not reach the outputs)."""
    level(isa)
    rng = np.random.default_rng(11)
    cout, cin, h, w = 24, 20, 6, 45
    weights = sparse_weights(rng, cout, cin, ksize, 0.35)
    weights[5] = 0.0
    weights[cout - 1] = 0.0
    weights[:, 7] = 0.0
    weights[:, cin - 1] = 0.0
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    ref, scale = reference_conv(x, weights, bias)
    x[7] = np.nan
    x[cin - 1] = np.nan
    layer = _core.Conv2d(weights, bias, isa=isa, format="csr")
    assert layer.nnz == np.count_nonzero(weights)
    got = run(layer, x, cout, _core.PixelSet.full(h, w))
    assert_close(got, ref, scale)
    np.testing.assert_array_equal(got[5], np.full((h, w), bias[5], np.float32))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_runs_prefixes_relu_residual(isa, ksize, sparsity):
    """Only the masked pixels of the first cout outputs are written, only the
    first cin inputs are read, ReLU comes before the residual add."""
    level(isa)
    rng = np.random.default_rng(int(sparsity * 100) + ksize)
    cout, cin, h, w = 37, 70, 9, 230
    weights = sparse_weights(rng, cout, cin, ksize, sparsity)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    residual = rng.standard_normal((cout, h, w)).astype(np.float32)
    before = rng.standard_normal((cout, h, w)).astype(np.float32)
    mask = rng.random((h, w)) < 0.3
    mask[2] = True            # a full row
    mask[3] = True            # two equal rows in a row
    mask[4] = False           # an empty row
    mask[5, 15:200] = True    # a run longer than any tile
    mask[6, :] = False
    mask[6, [0, 16, 17, w - 1]] = True  # single pixels at tile edges and the borders
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    assert pixels.count == mask.sum()
    use_cin, use_cout = 45, 29
    x_read = x.copy()
    x_read[use_cin:] = np.nan  # channels past the prefix must not be read
    layer = _core.Conv2d(weights, bias, isa=isa, format="csr")
    got = run(layer, x_read, cout, pixels, fill=before, relu=True, cin=use_cin, cout=use_cout,
              residual=residual)
    ref, scale = reference_conv(x[:use_cin], weights[:use_cout, :use_cin], bias[:use_cout])
    ref = np.maximum(ref, 0) + residual[:use_cout]
    scale = scale + np.abs(residual[:use_cout])
    expect, bound = before.astype(np.float64), np.zeros((cout, h, w))
    expect[:use_cout][:, mask] = ref[:, mask]
    bound[:use_cout][:, mask] = scale[:, mask]
    assert_close(got, expect, bound)


@pytest.mark.parametrize("isa", LEVELS)
def test_planes_from_several_features(isa):
    """Input planes are a pointer array: channels concatenated from two features."""
    level(isa)
    rng = np.random.default_rng(5)
    weights = sparse_weights(rng, 10, 12, 3, 0.5)
    bias = rng.standard_normal(10).astype(np.float32)
    x = rng.standard_normal((12, 8, 40)).astype(np.float32)
    a, b = _core.Feature.from_numpy(x[:5]), _core.Feature.from_numpy(x[5:])
    out = _core.Feature(10, 8, 40)
    _core.Conv2d(weights, bias, isa=isa, format="csr")(
        _core.Channels.cat([a.view(), b.view()]), out.view(), _core.PixelSet.full(8, 40))
    ref, scale = reference_conv(x, weights, bias)
    assert_close(out.numpy(), ref, scale)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_cost_model_keeps_lightly_sparse_layers_dense(isa, ksize):
    """csr_relative_cost falls with sparsity; a layer without zeros (or with 5 %)
    is never sent to CSR; at 90 % zeros CSR is chosen; an all-zero layer costs
    less than any other."""
    rng = np.random.default_rng(2)
    costs = [_core.csr_relative_cost(sparse_weights(rng, 32, 48, ksize, s), isa)
             for s in (0.0, 0.05, 0.3, 0.6, 0.9, 1.0)]
    assert all(a > b for a, b in zip(costs, costs[1:])), costs
    assert costs[0] > 1.0
    for s, expect in ((0.0, False), (0.05, False), (0.9, True)):
        assert _core.csr_beneficial(sparse_weights(rng, 32, 48, ksize, s), isa) is expect


def test_cost_model_counts_shared_row_loads():
    """The same number of zeros costs less when a row's taps are all kept (one
    load serves three FMAs) than when every row keeps a single tap."""
    rng = np.random.default_rng(4)
    w = sparse_weights(rng, 16, 16, 3, 0.0)
    whole_rows = w.copy()
    whole_rows[:, :, 1:] = 0          # a third of the weights: row ky = 0 whole
    one_column = w.copy()
    one_column[:, :, :, 1:] = 0       # a third of the weights: column kx = 0
    assert np.count_nonzero(whole_rows) == np.count_nonzero(one_column)
    assert (_core.csr_relative_cost(whole_rows, "avx512")
            < _core.csr_relative_cost(one_column, "avx512"))


def test_cost_model_rejects_other_kernel_sizes():
    w = np.ones((2, 2, 5, 5), np.float32)
    with pytest.raises(ValueError):
        _core.csr_relative_cost(w, "scalar")
    assert _core.csr_beneficial(w, "scalar") is False


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
@pytest.mark.parametrize("pixels_kind", ["full", "short runs"])
def test_input_prefix_sums_like_the_whole_layer_over_zeros(isa, ksize, pixels_kind):
    """Reading the first nd input channels gives bit for bit the image of reading
    all of them with the others zero: the input skip changes what is computed,
    never the result (SparSMSR "a" and "b" models give identical images). nd is
    past the first chunk, so the two reads cross chunk boundaries."""
    level(isa)
    rng = np.random.default_rng(17)
    cout, cin, nd, h, w = 24, 64, 30, 6, 300
    weights = sparse_weights(rng, cout, cin, ksize, 0.35)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    x[nd:] = 0.0
    if pixels_kind == "full":
        pixels = _core.PixelSet.full(h, w)
    else:                                   # runs of 3-9 pixels: the gathered path
        mask = np.zeros((h, w), np.uint8)
        for y in range(h):
            for x0 in range(2, w - 10, 23):
                mask[y, x0:x0 + 3 + (x0 + y) % 7] = 1
        pixels = _core.PixelSet.from_mask(mask, h, w)
    layer = _core.Conv2d(weights, bias, isa=isa, format="csr")
    prefix = run(layer, x, cout, pixels, cin=nd)
    whole = run(layer, x, cout, pixels)
    np.testing.assert_array_equal(prefix, whole)
