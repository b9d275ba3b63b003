"""The block-sparse (bcsr) convolution kernels against a plain float64
convolution and against their scalar twin, at every ISA level this CPU has.

A bcsr block is the kernel's block of output channels (consecutive) at one
(input channel, tap); the blocks share one pattern. Odd sizes, cout not a
multiple of the block, sparsities from none to all, empty blocks, zero input
channels, channel prefixes, short runs from a mask, ReLU, negative slopes and
residual; the packing's refusals and the cost model. Tolerance: 1e-4 of the
sum of absolute products at each output (tests/test_csr_kernels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsr import _core
from sparsr.ops.conv import choose_format
from test_csr_kernels import assert_close, reference_conv, run, sparse_weights

LEVELS = ["scalar", "avx2", "avx512"]


def bcsr_kernels():
    return [k for k in _core.kernels() if k["format"] == "bcsr"]


BLOCK = bcsr_kernels()[0]["block"] if bcsr_kernels() else 1


def level(isa):
    if not _core.isa_supported(isa):
        pytest.skip(f"this CPU lacks {isa}")
    return isa


def block_weights(rng, cout, cin, k, sparsity, inner=0.0, block=BLOCK):
    """round(sparsity * blocks) whole blocks zero at random places, and a fraction
    `inner` of the weights of the kept blocks zero too."""
    w = sparse_weights(rng, cout, cin, k, 0.0)
    blocks = -(-cout // block)
    n = blocks * cin * k * k
    drop = np.zeros(n, dtype=bool)
    drop[rng.permutation(n)[: int(round(sparsity * n))]] = True
    w[np.repeat(drop.reshape(blocks, cin, k, k), block, axis=0)[:cout]] = 0.0
    w[rng.random(w.shape) < inner] = 0.0
    return w


def test_table_has_bcsr_at_every_level_with_one_block():
    ks = bcsr_kernels()
    assert {(k["ksize"], k["isa"]) for k in ks} == {(k, isa) for k in (1, 3) for isa in LEVELS}
    assert {k["block"] for k in ks} == {BLOCK} and BLOCK in (4, 8)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_layer_picks_the_bcsr_kernel_of_the_level(isa, ksize):
    level(isa)
    w = block_weights(np.random.default_rng(0), 12, 5, ksize, 0.5)
    layer = _core.Conv2d(w, None, isa=isa, format="bcsr")
    entry = next(k for k in bcsr_kernels() if k["ksize"] == ksize and k["isa"] == isa)
    assert (layer.kernel, layer.format, layer.isa) == (entry["name"], "bcsr", isa)
    assert layer.nnz == np.count_nonzero(w)


SHAPES = [  # (cout, cin, h, w): odd sizes, cout not a multiple of the block, one pixel,
    # rows shorter than a vector and than a tile, several tiles, many input channels
    (3, 2, 1, 1), (13, 7, 3, 17), (8, 9, 37, 53), (20, 13, 4, 16), (17, 64, 3, 200),
    (9, 30, 2, 257), (33, 256, 2, 48), (1, 5, 5, 49)]
SPARSITIES = [0.0, 0.5, 0.9, 1.0]


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bcsr_matches_reference_and_twin(isa, ksize, sparsity, shape):
    level(isa)
    cout, cin, h, w = shape
    rng = np.random.default_rng(abs(hash((isa, ksize, sparsity, shape))) % 2**32)
    weights = block_weights(rng, cout, cin, ksize, sparsity, inner=0.2)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    full = _core.PixelSet.full(h, w)
    ref, scale = reference_conv(x, weights, bias)
    got = run(_core.Conv2d(weights, bias, isa=isa, format="bcsr"), x, cout, full)
    assert_close(got, ref, scale)
    twin = run(_core.Conv2d(weights, bias, isa="scalar", format="bcsr"), x, cout, full)
    assert_close(got, twin, scale)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_unstructured_weights_are_packed_whole(isa, ksize):
    """Weights that are not block-sparse run exactly as well (a block keeps every
    position where any of its channels has a nonzero)."""
    level(isa)
    rng = np.random.default_rng(3)
    weights = sparse_weights(rng, 21, 19, ksize, 0.6)
    bias = rng.standard_normal(21).astype(np.float32)
    x = rng.standard_normal((19, 6, 70)).astype(np.float32)
    ref, scale = reference_conv(x, weights, bias)
    got = run(_core.Conv2d(weights, bias, isa=isa, format="bcsr"), x, 21,
              _core.PixelSet.full(6, 70))
    assert_close(got, ref, scale)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_empty_blocks_and_zero_input_channels(isa, ksize):
    """An all-zero block is its bias; a zero input channel is never read (NaN in
    it does not reach the outputs); an all-zero layer is its bias."""
    level(isa)
    rng = np.random.default_rng(11)
    cout, cin, h, w = 3 * BLOCK + 2, 20, 6, 45
    weights = block_weights(rng, cout, cin, ksize, 0.35)
    weights[BLOCK:2 * BLOCK] = 0.0       # a whole block
    weights[3 * BLOCK:] = 0.0            # the short last block
    weights[:, 7] = 0.0
    weights[:, cin - 1] = 0.0
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    ref, scale = reference_conv(x, weights, bias)
    x[7] = np.nan
    x[cin - 1] = np.nan
    full = _core.PixelSet.full(h, w)
    got = run(_core.Conv2d(weights, bias, isa=isa, format="bcsr"), x, cout, full)
    assert_close(got, ref, scale)
    for o in list(range(BLOCK, 2 * BLOCK)) + [cout - 1]:
        np.testing.assert_array_equal(got[o], np.full((h, w), bias[o], np.float32))
    empty = run(_core.Conv2d(np.zeros_like(weights), bias, isa=isa, format="bcsr"), x, cout, full)
    np.testing.assert_array_equal(empty, np.broadcast_to(bias[:, None, None], empty.shape))


def _mask(rng, h, w):
    mask = rng.random((h, w)) < 0.3
    mask[2] = True            # a full row
    mask[3] = True            # two equal rows in a row
    mask[4] = False           # an empty row
    mask[5, 15:200] = True    # a run longer than any tile
    mask[6, :] = False
    mask[6, [0, 16, 17, w - 1]] = True  # single pixels at tile edges and the borders
    return mask


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
@pytest.mark.parametrize("epilogue", ["relu", "slopes", "none"])
def test_runs_prefixes_epilogues_residual(isa, ksize, epilogue):
    """Only the masked pixels of the first cout outputs are written (a prefix that
    ends inside a block), only the first cin inputs are read; the activation
    (ReLU or negative slopes) comes before the residual add."""
    level(isa)
    rng = np.random.default_rng(ksize * 10 + len(epilogue))
    cout, cin, h, w = 37, 70, 9, 230
    weights = block_weights(rng, cout, cin, ksize, 0.6, inner=0.1)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    residual = rng.standard_normal((cout, h, w)).astype(np.float32)
    before = rng.standard_normal((cout, h, w)).astype(np.float32)
    mask = _mask(rng, h, w)
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    use_cin, use_cout = 45, 2 * BLOCK + 3
    x_read = x.copy()
    x_read[use_cin:] = np.nan  # channels past the prefix must not be read
    slopes = rng.uniform(-0.5, 0.5, cout).astype(np.float32)
    kw = {"relu": {"relu": True}, "slopes": {"slopes": slopes}, "none": {}}[epilogue]
    layer = _core.Conv2d(weights, bias, isa=isa, format="bcsr")
    got = run(layer, x_read, cout, pixels, fill=before, cin=use_cin, cout=use_cout,
              residual=residual, **kw)
    ref, scale = reference_conv(x[:use_cin], weights[:use_cout, :use_cin], bias[:use_cout])
    if epilogue == "relu":
        ref = np.maximum(ref, 0)
    elif epilogue == "slopes":
        ref = np.where(ref >= 0, ref, slopes[:use_cout, None, None].astype(np.float64) * ref)
    ref = ref + residual[:use_cout]
    scale = scale + np.abs(residual[:use_cout])
    expect, bound = before.astype(np.float64), np.zeros((cout, h, w))
    expect[:use_cout][:, mask] = ref[:, mask]
    bound[:use_cout][:, mask] = scale[:, mask]
    assert_close(got, expect, bound)
    twin = run(_core.Conv2d(weights, bias, isa="scalar", format="bcsr"), x_read, cout, pixels,
               fill=before, cin=use_cin, cout=use_cout, residual=residual, **kw)
    assert_close(got, twin, bound)


@pytest.mark.parametrize("isa", LEVELS)
def test_large_outputs_streamed(isa):
    """A full-frame output (streamed past the caches) is the same as the twin's."""
    level(isa)
    rng = np.random.default_rng(8)
    for ksize in (1, 3):
        weights = block_weights(rng, 64, 16, ksize, 0.5)
        x = rng.standard_normal((16, 260, 270)).astype(np.float32)
        full = _core.PixelSet.full(260, 270)
        got = run(_core.Conv2d(weights, None, isa=isa, format="bcsr"), x, 64, full)
        twin = run(_core.Conv2d(weights, None, isa="scalar", format="bcsr"), x, 64, full)
        ref, scale = reference_conv(x[:, :12, :], weights, None)
        assert_close(got[:, :11], ref[:, :11], scale[:, :11])
        np.testing.assert_allclose(got, twin, rtol=1e-5, atol=1e-5)


def test_bad_layers_are_refused():
    w = block_weights(np.random.default_rng(1), 8, 4, 3, 0.5)
    with pytest.raises(ValueError, match="no N:M options"):
        _core.Conv2d(w, None, format="bcsr", n=2, m=4)
    with pytest.raises(ValueError, match="1x1 and 3x3"):
        _core.Conv2d(np.ones((2, 2, 5, 5), np.float32), None, format="bcsr")
    with pytest.raises(ValueError, match="1x1 and 3x3"):
        _core.bcsr_relative_cost(np.ones((2, 2, 5, 5), np.float32), "scalar")
    with pytest.raises(ValueError, match="at least one output channel"):
        _core.bcsr_kept_fraction(w, 0)
    with pytest.raises(ValueError, match="weight must be"):
        _core.bcsr_kept_fraction(np.ones((2, 2, 3), np.float32))


def test_kept_fraction_counts_blocks():
    rng = np.random.default_rng(6)
    for sparsity in (0.0, 0.25, 0.5, 1.0):
        w = block_weights(rng, 3 * BLOCK, 10, 3, sparsity)
        n = 3 * 10 * 9
        assert _core.bcsr_kept_fraction(w) == pytest.approx(1 - round(sparsity * n) / n)
    w = block_weights(rng, 2 * BLOCK, 10, 3, 0.0)
    w[1:] = 0.0                          # one nonzero channel keeps its whole block
    assert _core.bcsr_kept_fraction(w) == pytest.approx(0.5)
    assert _core.bcsr_kept_fraction(w, 1) == pytest.approx(1 / (2 * BLOCK))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("ksize", [1, 3])
def test_cost_model_keeps_dense_layers_dense_and_takes_the_cheaper_sparse_format(isa, ksize):
    """bcsr's cost falls with the kept fraction; "sparse" keeps a layer without zeros
    (a 3x3 also with 2 % of its blocks zero) dense, and otherwise runs the format whose model
    expects the shorter time, if it beats dense; unstructured zeros (every block
    still kept) never go to bcsr."""
    level(isa)
    rng = np.random.default_rng(2)
    costs = [_core.bcsr_relative_cost(block_weights(rng, 32, 48, ksize, s), isa)
             for s in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert all(a > b for a, b in zip(costs, costs[1:])), costs
    assert costs[0] > 0.95
    assert choose_format("sparse", block_weights(rng, 32, 48, ksize, 0.0), isa) == "dense"
    if ksize == 3:   # the bcsr 1x1 kernels run near or below dense time even without zeros
        assert choose_format("sparse", block_weights(rng, 32, 48, 3, 0.02), isa) == "dense"
    assert choose_format("sparse", sparse_weights(rng, 32, 48, ksize, 0.5), isa) != "bcsr"
    for s in (0.5, 0.9):
        w = block_weights(rng, 32, 48, ksize, s)
        cost = {"csr": _core.csr_relative_cost(w, isa), "bcsr": _core.bcsr_relative_cost(w, isa)}
        best = min(cost, key=cost.get)
        assert choose_format("sparse", w, isa) == (best if cost[best] < 0.95 else "dense")


def test_vector_levels_choose_bcsr_for_block_sparse_3x3():
    rng = np.random.default_rng(9)
    for isa in ("avx2", "avx512"):
        if _core.isa_supported(isa):
            for s in (0.35, 0.5, 0.7):
                assert choose_format("sparse", block_weights(rng, 64, 64, 3, s), isa) == "bcsr"


@pytest.mark.parametrize("forced", ["scalar", "avx2"])
def test_forced_level_runs_its_bcsr_kernel(forced):
    """With SPARSR_ISA forced, a layer asking for bcsr at the default level runs the
    kernel of the forced level, and its output matches the reference."""
    import os
    import subprocess
    import sys
    if not _core.isa_supported(forced):
        pytest.skip(f"this CPU lacks {forced}")
    code = (
        "import numpy as np\n"
        "from sparsr import _core\n"
        "from test_bcsr_kernels import block_weights\n"
        "from test_csr_kernels import assert_close, reference_conv, run\n"
        "rng = np.random.default_rng(1)\n"
        "w = block_weights(rng, 13, 11, 3, 0.5, inner=0.2)\n"
        "x = rng.standard_normal((11, 7, 61)).astype(np.float32)\n"
        "layer = _core.Conv2d(w, None, format='bcsr')\n"
        "ref, scale = reference_conv(x, w, None)\n"
        "assert_close(run(layer, x, 13, _core.PixelSet.full(7, 61)), ref, scale)\n"
        "print(layer.kernel)\n")
    env = dict(os.environ, SPARSR_ISA=forced)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    entry = next(k for k in bcsr_kernels() if k["ksize"] == 3 and k["isa"] == forced)
    assert r.stdout.split() == [entry["name"]]
