"""Kernels at SMSR's real layer shapes on a 360x640 feature, 2 threads: dense,
zero-skip (CSR) and block-sparse (bcsr) at several weight sparsities, N:M patterns, and the masked
(gathered) path at several pixel densities. Each reports effective GFLOP/s
(2 x kept MACs / time), percent of the FMA peak measured in the same run, and
time / (kept MAC fraction x the engine's dense time for the same shape)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsr import _core, _peak

H, W = 360, 640
ROUNDS = 7
SHAPES = {  # name: (cout, cin, k)
    "3x3 64->64": (64, 64, 3),
    "1x1 256->64": (64, 256, 1),
    "1x1 320->64": (64, 320, 1),
    "mask 3x3 64->16": (16, 64, 3),
}
DENSE_TIMES: dict[str, float] = {}


def _formats():
    return {k["format"] for k in _core.kernels()}


@pytest.fixture(scope="module")
def peak(results):
    isa = _core.active_isa()
    results.peak_gflops = _peak.fma_peak_gflops(isa, 1.0)
    # The ceiling of a sparse kernel: one input vector load per FMA.
    results.load_peak_gflops = _peak.fma_peak_gflops(isa, 1.0, loads=True)
    return results.peak_gflops


def _weights(rng, cout, cin, k):
    return (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)


def _prune_unstructured(w, sparsity):
    flat = np.abs(w).ravel()
    k = int(round(sparsity * flat.size))
    out = w.copy()
    if k:
        out.ravel()[np.argsort(flat, kind="stable")[:k]] = 0
    return out


def _prune_nm(w, n, m):
    cout, cin, kh, kw = w.shape
    g = w.transpose(0, 2, 3, 1).reshape(cout, kh, kw, cin // m, m)
    order = np.argsort(-np.abs(g), axis=-1, kind="stable")
    keep = np.zeros_like(g, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return (g * keep).reshape(cout, kh, kw, cin).transpose(0, 3, 1, 2).copy()


def _time(benchmark, layer, x, y, pixels):
    benchmark.pedantic(lambda: layer(x.view(), y.view(), pixels), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    return benchmark.stats.stats.median


def _record(results, peak, name, shape, kept, seconds, macs_dense):
    gflops = 2 * kept * macs_dense / seconds / 1e9
    dense = DENSE_TIMES.get(shape)
    results.kernels.append({
        "name": name, "shape": shape, "kept": kept, "ms": seconds * 1e3, "gflops": gflops,
        "peak_pct": 100 * gflops / peak if peak else None,
        "efficiency": seconds / (kept * dense) if dense else None})


def _setup(shape):
    cout, cin, k = SHAPES[shape]
    rng = np.random.default_rng(0)
    x = _core.Feature.from_numpy(rng.standard_normal((cin, H, W)).astype(np.float32))
    return rng, (cout, cin, k), x, _core.Feature(cout, H, W)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_dense(benchmark, results, peak, shape):
    rng, (cout, cin, k), x, y = _setup(shape)
    layer = _core.Conv2d(_weights(rng, cout, cin, k))
    t = _time(benchmark, layer, x, y, _core.PixelSet.full(H, W))
    DENSE_TIMES[shape] = t
    _record(results, peak, layer.kernel, shape, 1.0, t, H * W * cout * cin * k * k)


def _bf16_levels():
    return sorted({k["isa"] for k in _core.kernels()
                   if k["precision"] == "bf16" and k["isa"] != "scalar"})


@pytest.mark.parametrize("level", _bf16_levels())
@pytest.mark.parametrize("shape", list(SHAPES))
def test_dense_bf16(benchmark, results, peak, shape, level):
    """The bf16 dense kernels of each level; GFLOP/s against the f32 FMA peak."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    rng, (cout, cin, k), x, y = _setup(shape)
    layer = _core.Conv2d(_weights(rng, cout, cin, k), isa=level, precision="bf16")
    assert layer.precision == "bf16"
    t = _time(benchmark, layer, x, y, _core.PixelSet.full(H, W))
    _record(results, peak, layer.kernel, shape, 1.0, t, H * W * cout * cin * k * k)


@pytest.mark.parametrize("shape", ["3x3 64->64", "1x1 256->64"])
@pytest.mark.parametrize("sparsity", [0.35, 0.5, 0.7, 0.9])
def test_csr(benchmark, results, peak, shape, sparsity):
    if "csr" not in _formats():
        pytest.skip("no csr kernels in this build")
    rng, (cout, cin, k), x, y = _setup(shape)
    w = _prune_unstructured(_weights(rng, cout, cin, k), sparsity)
    layer = _core.Conv2d(w, format="csr")
    t = _time(benchmark, layer, x, y, _core.PixelSet.full(H, W))
    _record(results, peak, f"{layer.kernel} s={sparsity}", shape, 1 - sparsity, t,
            H * W * cout * cin * k * k)


def _prune_blocks(w, sparsity, block):
    """Whole blocks zero (block output channels at one input channel and tap),
    smallest L2 norm first: the unit the bcsr kernels skip."""
    cout, cin, kh, kw = w.shape
    g = w.reshape(cout // block, block, cin * kh * kw)
    norms = np.square(g).sum(1).ravel()
    drop = np.zeros(norms.size, dtype=bool)
    drop[np.argsort(norms, kind="stable")[: int(round(sparsity * norms.size))]] = True
    out = g * ~drop.reshape(cout // block, 1, -1)
    return out.reshape(w.shape).astype(np.float32)


@pytest.mark.parametrize("shape", ["3x3 64->64", "1x1 256->64"])
@pytest.mark.parametrize("sparsity", [0.35, 0.5, 0.7, 0.9])
def test_bcsr(benchmark, results, peak, shape, sparsity):
    if "bcsr" not in _formats():
        pytest.skip("no bcsr kernels in this build")
    block = next(k["block"] for k in _core.kernels() if k["format"] == "bcsr")
    rng, (cout, cin, k), x, y = _setup(shape)
    w = _prune_blocks(_weights(rng, cout, cin, k), sparsity, block)
    layer = _core.Conv2d(w, format="bcsr")
    t = _time(benchmark, layer, x, y, _core.PixelSet.full(H, W))
    _record(results, peak, f"{layer.kernel} s={sparsity}", shape, 1 - sparsity, t,
            H * W * cout * cin * k * k)


@pytest.mark.parametrize("shape", ["3x3 64->64", "1x1 256->64"])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8), (4, 8), (8, 32), (4, 32)])
def test_nm(benchmark, results, peak, shape, n, m):
    if "nm" not in _formats():
        pytest.skip("no nm kernels in this build")
    rng, (cout, cin, k), x, y = _setup(shape)
    w = _prune_nm(_weights(rng, cout, cin, k), n, m)
    layer = _core.Conv2d(w, format="nm", n=n, m=m)
    t = _time(benchmark, layer, x, y, _core.PixelSet.full(H, W))
    _record(results, peak, f"{layer.kernel} {n}:{m}", shape, n / m, t,
            H * W * cout * cin * k * k)


# The 3x3 goal shape again with every input channel read from one of two
# planes (channel i from plane i % 2): the ~8 KB of input rows a tile reads
# then stay in L1, for the dense and the sparse kernels alike. The ratios that
# remain are the kernels' own (loads, FMAs, loop structure), not the memory
# system's. The dense case runs first: the others are measured against it.
L1_SHAPE = "3x3 64->64, inputs in L1"
L1_CASES = [("dense", 1, 1), ("csr", 0.35, 0), ("csr", 0.5, 0), ("csr", 0.7, 0),
            ("bcsr", 0.35, 0), ("bcsr", 0.5, 0), ("bcsr", 0.7, 0),
            ("nm", 2, 4), ("nm", 1, 4), ("nm", 2, 8), ("nm", 8, 32), ("nm", 4, 32)]


@pytest.mark.parametrize("fmt, a, b", L1_CASES, ids=lambda v: str(v))
def test_inputs_in_l1(benchmark, results, peak, fmt, a, b):
    if fmt not in _formats():
        pytest.skip(f"no {fmt} kernels in this build")
    if fmt != "dense" and L1_SHAPE not in DENSE_TIMES:
        pytest.skip("the dense case with inputs in L1 did not run")
    rng, (cout, cin, k), x, y = _setup("3x3 64->64")
    w = _weights(rng, cout, cin, k)
    if fmt == "dense":
        layer, kept, label = _core.Conv2d(w), 1.0, ""
    elif fmt == "csr":
        layer, kept, label = _core.Conv2d(_prune_unstructured(w, a), format="csr"), 1 - a, f" s={a}"
    elif fmt == "bcsr":
        block = next(k["block"] for k in _core.kernels() if k["format"] == "bcsr")
        layer = _core.Conv2d(_prune_blocks(w, a, block), format="bcsr")
        kept, label = 1 - a, f" s={a}"
    else:
        layer, kept, label = _core.Conv2d(_prune_nm(w, a, b), format="nm", n=a, m=b), a / b, f" {a}:{b}"
    aliased = x.view([i % 2 for i in range(cin)])
    pixels = _core.PixelSet.full(H, W)
    benchmark.pedantic(lambda: layer(aliased, y.view(), pixels), rounds=ROUNDS, iterations=1,
                       warmup_rounds=1)
    t = benchmark.stats.stats.median
    if fmt == "dense":
        DENSE_TIMES[L1_SHAPE] = t
    _record(results, peak, layer.kernel + label, L1_SHAPE, kept, t, H * W * cout * cin * k * k)


def _blob_mask(rng, density):
    """A realistic mask: a smooth random field thresholded, so pixels come in
    runs and blobs as an SMSR spatial mask does (not salt-and-pepper)."""
    field = rng.standard_normal((H // 8 + 2, W // 8 + 2))
    from numpy.lib.stride_tricks import sliding_window_view
    field = sliding_window_view(field, (3, 3)).mean(axis=(2, 3))
    field = np.kron(field, np.ones((8, 8)))[:H, :W] + 0.03 * rng.standard_normal((H, W))
    return field > np.quantile(field, 1 - density)


@pytest.mark.parametrize("shape", ["3x3 64->64", "1x1 256->64"])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5])
def test_masked(benchmark, results, peak, shape, density):
    rng, (cout, cin, k), x, y = _setup(shape)
    layer = _core.Conv2d(_weights(rng, cout, cin, k))
    pixels = _core.PixelSet.from_mask(_blob_mask(rng, density).astype(np.uint8), H, W)
    kept = pixels.count / (H * W)
    t = _time(benchmark, layer, x, y, pixels)
    path = "gathered" if _core.Conv2d.use_gather(pixels) else "runs"
    _record(results, peak, f"{layer.kernel} masked {path} ({pixels.count / pixels.n_runs:.0f} px/run)",
            shape, kept, t, H * W * cout * cin * k * k)
