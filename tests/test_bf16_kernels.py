"""The bf16 kernels of csrc/kernels.inc (precision "bf16") against their scalar
twin and a float64 reference, on random shapes, edge sizes, pixel runs,
channel prefixes and epilogues; and the choice of kernel a bf16 request gets
at every ISA level, forced through SPARSR_ISA in subprocesses.

Tolerances: bf16 keeps 8 significant bits, so each of the two roundings of a
product w * x is off by at most 2^-8 of it (round to nearest); the sum is then
within 2 * 2^-8 * sum |w| |x| of the exact one, plus the f32 sums' own error.
The twin rounds the same way and sums in the same order as vdpbf16ps (the
AVX512_BF16 kernel matches it exactly on the CPUs measured); the AMX kernel
sums in its own order, within f32 summation noise of the twin."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sparsr import _core
from test_kernels import LEVELS, negative_slopes, reference_conv

BF16_LEVELS = ["avx512bf16", "amx"]   # the vector levels with bf16 kernels


def lacks(level):
    forced = os.environ.get("SPARSR_ISA")
    what = {"avx512bf16": "AVX512_BF16", "amx": "AMX-BF16 (or the OS's leave to use it)"}
    return (f"this CPU{f' under SPARSR_ISA={forced}' if forced else ''} lacks "
            f"{what.get(level, level)}")


def bf16_kernels():
    return [pytest.param(k, id=k["name"]) for k in _core.kernels() if k["precision"] == "bf16"]


def skip_unless_supported(kernel):
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(lacks(kernel["isa"]))


def round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), as float32 (finite normal inputs)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def bf16_bound(x, w):
    """2 * 2^-8 * sum |w| |x| per output, plus f32 summation slack: the bf16 error bound."""
    magnitude = reference_conv(np.abs(x), np.abs(w), None)
    return (2.0 ** -7 + 1e-5) * magnitude + 1e-5


def _run(layer, x, cout, pixels, fill=None, **kw):
    fi = _core.Feature.from_numpy(x)
    fo = _core.Feature.from_numpy(fill) if fill is not None else _core.Feature(cout, *x.shape[1:])
    res = kw.pop("residual", None)
    fr = _core.Feature.from_numpy(res) if res is not None else None
    if res is not None and res is fill:
        fr = fo
    layer(fi.view(), fo.view(), pixels, residual=fr.view() if fr is not None else None, **kw)
    return fo.numpy()


def _layers(kernel, weights, bias):
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"],
                         precision="bf16")
    assert layer.kernel == kernel["name"] and layer.precision == "bf16"
    twin = _core.Conv2d(weights, bias, isa="scalar", format=kernel["format"], precision="bf16")
    assert twin.precision == "bf16" and twin.isa == "scalar"
    return layer, twin


def _random_shapes(seed, n):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, 40)), int(rng.integers(1, 70)), int(rng.integers(1, 12)),
             int(rng.integers(1, 420))) for _ in range(n)]


SHAPES = [  # (cout, cin, h, w): odd channel counts, one pixel, edges of tiles and bands
    (8, 3, 1, 1), (16, 16, 3, 17), (64, 64, 13, 53), (12, 64, 7, 49), (5, 7, 9, 96),
    (64, 256, 5, 33), (2, 16, 4, 4), (1, 1, 3, 5), (9, 64, 2, 530), (16, 33, 3, 193),
] + _random_shapes(1, 6)


@pytest.mark.parametrize("kernel", bf16_kernels())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_bf16_kernel_matches_twin_and_reference(kernel, shape):
    skip_unless_supported(kernel)
    cout, cin, h, w = shape
    k = kernel["ksize"]
    rng = np.random.default_rng(zlib.crc32(f"{kernel['name']}{shape}".encode()))
    weights = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    layer, twin = _layers(kernel, weights, bias)
    full = _core.PixelSet.full(h, w)
    got, want = _run(layer, x, cout, full), _run(twin, x, cout, full)
    ref = reference_conv(x, weights, bias)
    assert np.all(np.abs(got - ref) <= bf16_bound(x, weights))
    # The twin is bf16: it matches the float64 conv of the rounded operands...
    rounded = reference_conv(round_bf16(x), round_bf16(weights), bias)
    np.testing.assert_allclose(want, rounded, rtol=1e-5, atol=1e-5)
    # ... and the kernel matches the twin to f32 summation noise.
    assert np.all(np.abs(got - want) <= 1e-5 * reference_conv(np.abs(x), np.abs(weights), None)
                  + 1e-6)


def test_bf16_differs_from_f32():
    """A bf16 layer really rounds (a twin that summed in f32 would pass the bound)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    x = rng.standard_normal((16, 6, 40)).astype(np.float32)
    full = _core.PixelSet.full(6, 40)
    f32 = _run(_core.Conv2d(w, None, isa="scalar"), x, 8, full)
    bf16 = _run(_core.Conv2d(w, None, isa="scalar", precision="bf16"), x, 8, full)
    assert 1e-3 < np.abs(bf16 - f32).max() < 0.5


@pytest.mark.parametrize("kernel", bf16_kernels())
@pytest.mark.parametrize("case", [("in-place", None, None), ("runs-residual", 0.6, "separate"),
                                  ("gathered", 0.1, None), ("gathered-accumulated", 0.3, "output")],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("act", ["none", "relu", "slopes"])
def test_bf16_kernel_epilogues_runs_and_prefixes(kernel, case, act):
    """Bias, ReLU or negative slopes, then the residual; only the set's pixels
    and the first cout outputs written, the first cin (odd) inputs read; in
    place and gathered (short runs)."""
    skip_unless_supported(kernel)
    _, density, residual = case
    rng = np.random.default_rng(zlib.crc32(f"{kernel['name']}{case}{act}".encode()))
    cout, cin, h, w = 20, 24, 13, 83
    use_cin, use_cout = 19, 17
    k = kernel["ksize"]
    weights = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    slopes = negative_slopes(rng, cout)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    before = rng.standard_normal((cout, h, w)).astype(np.float32)
    mask = np.ones((h, w), bool) if density is None else rng.random((h, w)) < density
    mask[2, :] = True
    mask[5, 20:75] = True
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    res = rng.standard_normal((cout, h, w)).astype(np.float32) if residual == "separate" else None
    kw = {"relu": act == "relu", "slopes": slopes if act == "slopes" else None,
          "cin": use_cin, "cout": use_cout}

    def run(layer):
        fi, fo = _core.Feature.from_numpy(x), _core.Feature.from_numpy(before)
        fr = _core.Feature.from_numpy(res).view() if res is not None else None
        layer(fi.view(), fo.view(), pixels, residual=fo.view() if residual == "output" else fr,
              **kw)
        return fo.numpy()

    layer, twin = _layers(kernel, weights, bias)
    got, want = run(layer), run(twin)
    ref = reference_conv(x[:use_cin], weights[:use_cout, :use_cin], bias[:use_cout],
                         relu=act == "relu", slopes=slopes[:use_cout] if act == "slopes" else None,
                         residual=None if res is None else res[:use_cout])
    expect = before.astype(np.float64)
    if residual == "output":
        expect[:use_cout][:, mask] += ref[:, mask]
    else:
        expect[:use_cout][:, mask] = ref[:, mask]
    # The activation scales an error by at most max(1, |slope|).
    scale = max(1.0, float(np.abs(slopes).max())) if act == "slopes" else 1.0
    bound = np.zeros_like(expect)
    bound[:use_cout] = scale * bf16_bound(x[:use_cin], weights[:use_cout, :use_cin])
    assert np.all(np.abs(got - expect) <= bound + 1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    untouched = np.ones((cout, h, w), bool)
    untouched[:use_cout][:, mask] = False
    np.testing.assert_array_equal(got[untouched], before[untouched])


@pytest.mark.parametrize("kernel", bf16_kernels())
def test_bf16_kernel_reading_no_input_channel_writes_the_bias(kernel):
    skip_unless_supported(kernel)
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((12, 16, kernel["ksize"], kernel["ksize"])).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    x = rng.standard_normal((16, 5, 41)).astype(np.float32)
    layer, _ = _layers(kernel, weights, bias)
    got = _run(layer, x, 12, _core.PixelSet.full(5, 41), relu=True, cin=0)
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0)[:, None, None],
                                                       got.shape))


def test_bf16_weights_round_to_nearest_even():
    """Weights exactly between two bf16 values round to the even one; the
    scalar twin (1 x 1 input of 1.0) shows the packed weight."""
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to 1 (even); 1 + 3 * 2^-8 to 1 + 2^-6.
    w = np.array([1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, -(1 + 2.0 ** -8)], np.float32)
    layer = _core.Conv2d(w.reshape(3, 1, 1, 1), None, isa="scalar", precision="bf16")
    got = _run(layer, np.ones((1, 1, 1), np.float32), 3, _core.PixelSet.full(1, 1))
    np.testing.assert_array_equal(got.ravel(), [1.0, 1 + 2.0 ** -6, -1.0])


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        _core.Conv2d(np.zeros((4, 4, 3, 3), np.float32), precision="fp16")


def test_sparse_formats_run_f32_when_asked_for_bf16():
    """No bf16 kernel for CSR or N:M (yet): a bf16 request runs their f32 kernel."""
    w = np.zeros((8, 8, 3, 3), np.float32)
    w[:, :, 1, 1] = 1
    layer = _core.Conv2d(w, format="csr", precision="bf16")
    assert layer.precision == "f32" and layer.format == "csr"


_CHOICE = ("import numpy as np\n"
           "from sparsr import _core\n"
           "for k in (3, 1):\n"
           "    c = _core.Conv2d(np.ones((16, 8, k, k), np.float32), precision='bf16')\n"
           "    print(_core.active_isa(), c.kernel, c.precision)\n")


@pytest.mark.parametrize("level", LEVELS + BF16_LEVELS)
def test_bf16_request_at_each_forced_level(level):
    """SPARSR_ISA=level: avx512bf16 and amx run their bf16 kernels, avx2 and
    avx512 the f32 kernels of their level (no bf16 there), scalar the twin."""
    if not _core.isa_supported(level):
        pytest.skip(lacks(level))
    r = subprocess.run([sys.executable, "-c", _CHOICE], capture_output=True, text=True,
                       env=dict(os.environ, SPARSR_ISA=level))
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        active, kernel, precision = line.split()
        assert active == level
        assert kernel.endswith("_" + level)
        assert precision == ("f32" if level in ("avx2", "avx512") else "bf16")


@pytest.mark.parametrize("level", ["scalar", "avx512", "avx512bf16"])
def test_bf16_suite_on_a_lower_level_machine(level):
    """This file as on a CPU without AMX (or AVX512_BF16): the kernels above
    the level are skipped, the others still run."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    if os.environ.get("SPARSR_ISA"):
        pytest.skip("already running under a forced level")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        __file__, "-k", "not lower_level and not forced_level"],
                       capture_output=True, text=True, env=dict(os.environ, SPARSR_ISA=level))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" in r.stdout


@pytest.mark.parametrize("kernel", bf16_kernels())
def test_bf16_threads_give_identical_results(kernel):
    skip_unless_supported(kernel)
    rng = np.random.default_rng(5)
    k = kernel["ksize"]
    w = rng.standard_normal((40, 32, k, k)).astype(np.float32)
    x = rng.standard_normal((32, 30, 300)).astype(np.float32)
    layer, _ = _layers(kernel, w, None)
    outs = []
    old = _core.num_threads()
    try:
        for n in (1, 2, 3):
            _core.set_num_threads(n)
            outs.append(_run(layer, x, 40, _core.PixelSet.full(30, 300)))
    finally:
        _core.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("kernel", bf16_kernels())
def test_bf16_rows_sharing_inputs(kernel):
    """Runs of equal columns in consecutive rows share converted input rows;
    a skipped row, a row of other columns and two runs in one row do not."""
    skip_unless_supported(kernel)
    rng = np.random.default_rng(13)
    cout, cin, h, w = 24, 40, 12, 300
    k = kernel["ksize"]
    weights = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    mask = np.zeros((h, w), bool)
    mask[0:4, 5:290] = True      # four rows of the same columns
    mask[5:7, 5:290] = True      # after a skipped row
    mask[7, 0:300] = True        # other columns
    mask[8, 3:40] = mask[8, 100:280] = True   # two runs in one row
    mask[9:12, 100:280] = True
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    assert not _core.Conv2d.use_gather(pixels)
    layer, twin = _layers(kernel, weights, None)
    old = _core.num_threads()
    try:
        _core.set_num_threads(1)       # one task: every row after the other
        got = _run(layer, x, cout, pixels)
    finally:
        _core.set_num_threads(old)
    np.testing.assert_allclose(got, _run(twin, x, cout, pixels), rtol=1e-5, atol=1e-5)
    assert not got[:, ~mask].any()
