"""The int8 kernels of csrc/kernels.inc (precision "int8") against their scalar
twin and a float64 reference, on random shapes, edge sizes, pixel runs,
channel prefixes (cin not a multiple of 4) and epilogues; saturation, bad
quantization parameters; and the kernel an int8 request gets at every ISA
level, forced through SPARSR_ISA in subprocesses.

Tolerances: the twin quantizes every input to u8, q = round(x / s + z)
(pack_dense_int8), and every weight to s8 with a scale per output channel;
its sums are exact int32, so it matches the float64 conv of the dequantized
operands s (q - z) and s_w w_q up to the one f32 rounding of the
dequantization. Against the exact conv the error of a product w x is then at
most |w| s / 2 + (|x| + s / 2) s_w / 2 (half a step of each rounding, inputs
within the clip range). The vector kernels quantize, sum and dequantize as
the twin does: bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sparsr import _core
from test_kernels import LEVELS, negative_slopes, reference_conv

INT8_LEVELS = ["avx512bf16", "amx"]   # the levels with AVX512_VNNI


def int8_kernels():
    return [pytest.param(k, id=k["name"]) for k in _core.kernels() if k["precision"] == "int8"]


def skip_unless_supported(kernel):
    if not _core.isa_supported(kernel["isa"]):
        forced = os.environ.get("SPARSR_ISA")
        pytest.skip(f"this CPU{f' under SPARSR_ISA={forced}' if forced else ''} lacks "
                    f"{'AVX512_VNNI' if kernel['isa'] != 'scalar' else kernel['isa']}")


def quantize_input(x, scale, zero):
    """u8 codes of the kernels: fma(x, 1/scale, zero) in f32 (a float64 sum of
    the exact product, rounded once), at most 255, to nearest even, >= 0."""
    inv = np.float32(1.0) / np.float32(scale)
    v = (x.astype(np.float64) * np.float64(inv) + zero).astype(np.float32)
    v = np.where(np.isnan(v), np.float32(255), np.minimum(v, np.float32(255)))
    return np.clip(np.rint(v), 0, 255)


def quantize_weights(w):
    """s8 codes and the scale of each output channel (pack_dense_int8)."""
    peak = np.abs(w).reshape(len(w), -1).max(axis=1)
    sw = np.where(peak > 0, peak / np.float32(127), 1).astype(np.float32)
    q = np.clip(np.rint(w / sw[:, None, None, None]), -127, 127)
    return q, sw


def input_quant(x, zero):
    """The calibration a test layer gets: the clip range of x, no clipping."""
    top = float(np.abs(x).max()) or 1.0
    return top / (255.0 if zero == 0 else 127.0)


def dequantized_reference(x, w, b, scale, zero, **kw):
    """The float64 conv of the operands the twin really multiplies."""
    q, sw = quantize_weights(w)
    xd = scale * (quantize_input(x, scale, zero) - zero)
    return reference_conv(xd, q * sw[:, None, None, None].astype(np.float64), b, **kw)


def int8_bound(x, w, scale):
    """Per output: sum over products of |w| s / 2 + (|x| + s / 2) s_w / 2, plus f32 slack."""
    _, sw = quantize_weights(w)
    a = reference_conv(np.ones_like(x), np.abs(w), None) * scale / 2
    b = reference_conv(np.abs(x) + scale / 2, np.ones_like(w), None) * sw[:, None, None] / 2
    return 1.0001 * (a + b) + 1e-4


def _run(layer, x, cout, pixels, fill=None, **kw):
    fi = _core.Feature.from_numpy(x)
    fo = _core.Feature.from_numpy(fill) if fill is not None else _core.Feature(cout, *x.shape[1:])
    res = kw.pop("residual", None)
    fr = _core.Feature.from_numpy(res) if res is not None else None
    layer(fi.view(), fo.view(), pixels, residual=fr.view() if fr is not None else None, **kw)
    return fo.numpy()


def _layers(kernel, weights, bias, scale, zero):
    kw = dict(format=kernel["format"], precision="int8", in_scale=scale, in_zero_point=zero)
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], **kw)
    assert layer.kernel == kernel["name"] and layer.precision == "int8"
    twin = _core.Conv2d(weights, bias, isa="scalar", **kw)
    assert twin.precision == "int8" and twin.isa == "scalar"
    return layer, twin


def _random_shapes(seed, n):
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(1, 40)), int(rng.integers(1, 70)), int(rng.integers(1, 12)),
             int(rng.integers(1, 420))) for _ in range(n)]


SHAPES = [  # (cout, cin, h, w): cin not a multiple of 4, one pixel, edges of tiles and bands
    (8, 3, 1, 1), (16, 16, 3, 17), (64, 64, 13, 53), (12, 63, 7, 49), (5, 7, 9, 96),
    (64, 256, 5, 33), (2, 18, 4, 4), (1, 1, 3, 5), (9, 64, 2, 530), (16, 33, 3, 193),
] + _random_shapes(1, 6)


@pytest.mark.parametrize("kernel", int8_kernels())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("zero", [0, 128])
def test_int8_kernel_matches_twin_and_reference(kernel, shape, zero):
    skip_unless_supported(kernel)
    cout, cin, h, w = shape
    k = kernel["ksize"]
    rng = np.random.default_rng(zlib.crc32(f"{kernel['name']}{shape}{zero}".encode()))
    weights = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    if zero == 0:
        x = np.maximum(x, 0)    # a ReLU output
    scale = input_quant(x, zero)
    layer, twin = _layers(kernel, weights, bias, scale, zero)
    full = _core.PixelSet.full(h, w)
    got, want = _run(layer, x, cout, full), _run(twin, x, cout, full)
    np.testing.assert_array_equal(got, want)
    ref = reference_conv(x, weights, bias)
    assert np.all(np.abs(got - ref) <= int8_bound(x, weights, scale))
    deq = dequantized_reference(x, weights, bias, scale, zero)
    magnitude = reference_conv(np.abs(x) + scale, np.abs(weights), None) + np.abs(bias)[:, None, None]
    assert np.all(np.abs(want - deq) <= 2e-6 * magnitude + 1e-6)


def test_int8_differs_from_f32():
    """An int8 layer really quantizes (a twin that summed in f32 would pass the bound)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    x = rng.standard_normal((16, 6, 40)).astype(np.float32)
    full = _core.PixelSet.full(6, 40)
    f32 = _run(_core.Conv2d(w, None, isa="scalar"), x, 8, full)
    int8 = _run(_core.Conv2d(w, None, isa="scalar", precision="int8",
                             in_scale=input_quant(x, 128), in_zero_point=128), x, 8, full)
    assert 1e-2 < np.abs(int8 - f32).max() < 2.0


@pytest.mark.parametrize("kernel", int8_kernels())
@pytest.mark.parametrize("case", [("in-place", None, None), ("runs-residual", 0.6, "separate"),
                                  ("gathered", 0.1, None), ("gathered-accumulated", 0.3, "output")],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("act", ["none", "relu", "slopes"])
def test_int8_kernel_epilogues_runs_and_prefixes(kernel, case, act):
    """Dequantize + bias, ReLU or negative slopes, then the residual; only the
    set's pixels and the first cout outputs written, the first cin (19, not a
    multiple of 4) inputs read and the zero point's correction over those
    only; in place and gathered (short runs)."""
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
    scale = input_quant(x, 128)

    def run(layer):
        fi, fo = _core.Feature.from_numpy(x), _core.Feature.from_numpy(before)
        fr = _core.Feature.from_numpy(res).view() if res is not None else None
        layer(fi.view(), fo.view(), pixels, residual=fo.view() if residual == "output" else fr,
              **kw)
        return fo.numpy()

    layer, twin = _layers(kernel, weights, bias, scale, 128)
    got, want = run(layer), run(twin)
    np.testing.assert_array_equal(got, want)
    act_kw = dict(relu=act == "relu", slopes=slopes[:use_cout] if act == "slopes" else None,
                  residual=None if res is None else res[:use_cout])
    # The weight scales are those of the whole layer (every input channel).
    _, sw = quantize_weights(weights)
    q, _ = quantize_weights(weights)
    xd = scale * (quantize_input(x[:use_cin], scale, 128) - 128)
    deq = reference_conv(xd, (q * sw[:, None, None, None])[:use_cout, :use_cin],
                         bias[:use_cout], **act_kw)
    ref = reference_conv(x[:use_cin], weights[:use_cout, :use_cin], bias[:use_cout], **act_kw)
    expect, exact = before.astype(np.float64), before.astype(np.float64)
    for e, r in ((expect, deq), (exact, ref)):
        if residual == "output":
            e[:use_cout][:, mask] += r[:, mask]
        else:
            e[:use_cout][:, mask] = r[:, mask]
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-4)
    scale_act = max(1.0, float(np.abs(slopes).max())) if act == "slopes" else 1.0
    bound = np.zeros_like(exact)
    full_sw = np.broadcast_to(sw[:use_cout, None, None], (use_cout, h, w))
    step = (reference_conv(np.ones_like(x[:use_cin]), np.abs(weights[:use_cout, :use_cin]),
                           None) * scale / 2
            + reference_conv(np.abs(x[:use_cin]) + scale / 2,
                             np.ones_like(weights[:use_cout, :use_cin]), None) * full_sw / 2)
    bound[:use_cout] = scale_act * step
    assert np.all(np.abs(got - exact) <= 1.0001 * bound + 1e-4)
    untouched = np.ones((cout, h, w), bool)
    untouched[:use_cout][:, mask] = False
    np.testing.assert_array_equal(got[untouched], before[untouched])


@pytest.mark.parametrize("kernel", int8_kernels())
def test_int8_kernel_reading_no_input_channel_writes_the_bias(kernel):
    skip_unless_supported(kernel)
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((12, 16, kernel["ksize"], kernel["ksize"])).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    x = rng.standard_normal((16, 5, 41)).astype(np.float32)
    layer, _ = _layers(kernel, weights, bias, 0.05, 128)
    got = _run(layer, x, 12, _core.PixelSet.full(5, 41), relu=True, cin=0)
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0)[:, None, None],
                                                       got.shape))


@pytest.mark.parametrize("kernel", int8_kernels())
@pytest.mark.parametrize("zero", [0, 128])
def test_int8_inputs_saturate(kernel, zero):
    """Inputs beyond the range clamp to the u8 codes 0 and 255 (NaN to 255);
    with one weight of 1 (s8 127, scale 1/127) the output is s (q - z)."""
    skip_unless_supported(kernel)
    k = kernel["ksize"]
    w = np.zeros((1, 1, k, k), np.float32)
    w[0, 0, k // 2, k // 2] = 1.0
    values = np.array([1e30, -1e30, np.inf, -np.inf, np.nan, 0.0, 0.26, -0.26, 12.7, -12.8, 40],
                      np.float32)
    x = np.tile(values, 5).reshape(1, 1, -1)
    scale = 0.1
    layer = _core.Conv2d(w, None, isa=kernel["isa"], precision="int8", in_scale=scale,
                         in_zero_point=zero)
    got = _run(layer, x, 1, _core.PixelSet.full(1, x.shape[2]))[0, 0]
    codes = np.tile(np.array([255, 0, 255, 0, 255, zero, zero + 3, max(zero - 3, 0),
                              min(zero + 127, 255), max(zero - 128, 0), 255]), 5)
    np.testing.assert_allclose(got, np.float32(scale) * (codes - zero), rtol=1e-6)


def test_bad_quantization_is_refused():
    w = np.ones((4, 4, 3, 3), np.float32)
    for scale in (0.0, -1.0, float("inf"), float("nan"), 1e-45):
        with pytest.raises(ValueError, match="positive finite input scale"):
            _core.Conv2d(w, isa="scalar", precision="int8", in_scale=scale)
    with pytest.raises(ValueError, match="zero point of 0 or 128"):
        _core.Conv2d(w, isa="scalar", precision="int8", in_scale=0.1, in_zero_point=7)


def test_int8_sums_that_could_overflow_are_refused():
    """cin * 9 products of at most 255 * 127 each must fit an int32."""
    with pytest.raises(ValueError, match="could overflow its int32 sums"):
        _core.Conv2d(np.ones((1, 7400, 3, 3), np.float32), isa="scalar", precision="int8",
                     in_scale=0.1)
    _core.Conv2d(np.ones((1, 7300, 3, 3), np.float32), isa="scalar", precision="int8",
                 in_scale=0.1)


def test_sparse_formats_run_f32_when_asked_for_int8():
    w = np.zeros((8, 8, 3, 3), np.float32)
    w[:, :, 1, 1] = 1
    layer = _core.Conv2d(w, format="csr", precision="int8", in_scale=0.1)
    assert layer.precision == "f32" and layer.format == "csr"


_CHOICE = ("import numpy as np\n"
           "from sparsr import _core\n"
           "for k in (3, 1):\n"
           "    c = _core.Conv2d(np.ones((16, 8, k, k), np.float32), precision='int8',\n"
           "                     in_scale=0.1)\n"
           "    print(_core.active_isa(), c.kernel, c.precision)\n")


@pytest.mark.parametrize("level", LEVELS + INT8_LEVELS)
def test_int8_request_at_each_forced_level(level):
    """SPARSR_ISA=level: avx512bf16 and amx run the AVX512_VNNI int8 kernels,
    avx2 and avx512 the f32 kernels of their level, scalar the twin."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    r = subprocess.run([sys.executable, "-c", _CHOICE], capture_output=True, text=True,
                       env=dict(os.environ, SPARSR_ISA=level))
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        active, kernel, precision = line.split()
        assert active == level
        assert kernel.endswith("_" + ("avx512bf16" if level == "amx" else level))
        assert precision == ("f32" if level in ("avx2", "avx512") else "int8")


@pytest.mark.parametrize("level", ["scalar", "avx512"])
def test_int8_suite_on_a_lower_level_machine(level):
    """This file as on a CPU without AVX512_VNNI: the vector int8 kernels are
    skipped, the twins still run."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    if os.environ.get("SPARSR_ISA"):
        pytest.skip("already running under a forced level")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        __file__, "-k", "not lower_level and not forced_level"],
                       capture_output=True, text=True, env=dict(os.environ, SPARSR_ISA=level))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" in r.stdout


@pytest.mark.parametrize("kernel", int8_kernels())
def test_int8_threads_give_identical_results(kernel):
    skip_unless_supported(kernel)
    rng = np.random.default_rng(5)
    k = kernel["ksize"]
    w = rng.standard_normal((40, 32, k, k)).astype(np.float32)
    x = rng.standard_normal((32, 30, 300)).astype(np.float32)
    layer, _ = _layers(kernel, w, None, input_quant(x, 128), 128)
    full = _core.PixelSet.full(30, 300)
    before = _core.num_threads()
    try:
        _core.set_num_threads(1)
        one = _run(layer, x, 40, full)
        _core.set_num_threads(2)
        two = _run(layer, x, 40, full)
    finally:
        _core.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("kernel", int8_kernels())
@pytest.mark.parametrize("case", ["rows", "chunks"])
def test_int8_rows_quantized_once_per_chunk(kernel, case):
    """Each input row of a chunk of runs is quantized once for every run that
    reads it: runs of equal columns in consecutive rows, after a skipped row,
    of other columns, two in one row; and tasks of more rows than one chunk
    holds."""
    skip_unless_supported(kernel)
    rng = np.random.default_rng(13)
    # chunks: one input row of 256 channels x 1100 columns is 64 quads x 1152
    # words, so a chunk (1 MiB) holds 3 rows, fewer than a task's.
    cout, cin, h, w = (24, 40, 12, 300) if case == "rows" else (8, 256, 12, 1100)
    k = kernel["ksize"]
    weights = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    mask = np.zeros((h, w), bool)
    if case == "rows":
        mask[0:4, 5:290] = True      # four rows of the same columns
        mask[5:7, 5:290] = True      # after a skipped row
        mask[7, 0:300] = True        # other columns
        mask[8, 3:40] = mask[8, 100:280] = True   # two runs in one row
        mask[9:12, 100:280] = True
    else:
        mask[:] = True
        mask[7, 400:900] = False
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    assert not _core.Conv2d.use_gather(pixels)
    layer, twin = _layers(kernel, weights, None, input_quant(x, 128), 128)
    old = _core.num_threads()
    try:
        _core.set_num_threads(1)       # one task: every row after the other
        got = _run(layer, x, cout, pixels)
    finally:
        _core.set_num_threads(old)
    np.testing.assert_array_equal(got, _run(twin, x, cout, pixels))
    assert not got[:, ~mask].any()
