"""Every micro-kernel of csrc/kernels.inc against its scalar twin and against a
plain convolution, on random shapes, edge sizes, pixel runs and channel prefixes.

The kernel list is read from the engine itself, so a kernel added to the table
is tested here; a new weight format must add its weight generator to
WEIGHT_MAKERS or this file fails."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sparsr import _core, _peak

LEVELS = ["scalar", "avx2", "avx512"]


def dense_weights(rng, cout, cin, k, **_):
    return rng.standard_normal((cout, cin, k, k)).astype(np.float32) / np.sqrt(cin * k * k), {}


def nm_weights(rng, cout, cin, k, n=2, m=4):
    """2:4 along input channels (every group of 4 keeps its 2 largest)."""
    if cin % m:
        pytest.skip(f"N:M needs Cin divisible by M={m}, got {cin}")
    w, _ = dense_weights(rng, cout, cin, k)
    g = w.transpose(0, 2, 3, 1).reshape(cout, k, k, cin // m, m)
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(-np.abs(g), axis=-1)[..., :n], True, axis=-1)
    w = (g * keep).reshape(cout, k, k, cin).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(w, dtype=np.float32), {"n": n, "m": m}


def csr_weights(rng, cout, cin, k):
    """Unstructured: about 60 % zeros, one output and one input channel all zero."""
    w, _ = dense_weights(rng, cout, cin, k)
    w[rng.random(w.shape) < 0.6] = 0
    w[cout // 2] = 0
    w[:, cin // 3] = 0
    return w, {}


def bcsr_weights(rng, cout, cin, k):
    """Block-sparse: about 60 % of the (block of output channels, input channel,
    tap) positions zero, some zeros inside kept blocks, one input channel all zero."""
    w, _ = dense_weights(rng, cout, cin, k)
    block = next(kk["block"] for kk in _core.kernels() if kk["format"] == "bcsr")
    blocks = -(-cout // block)
    drop = np.repeat(rng.random((blocks, cin, k, k)) < 0.6, block, axis=0)[:cout]
    w[drop] = 0
    w[rng.random(w.shape) < 0.1] = 0
    w[:, cin // 3] = 0
    return w, {}


# format -> function(rng, cout, cin, k) -> (weights, Conv2d keyword options)
WEIGHT_MAKERS = {"dense": dense_weights, "nm": nm_weights, "csr": csr_weights,
                 "bcsr": bcsr_weights}


def reference_conv(x, w, b, relu=False, residual=None, slopes=None):
    """Direct 'same' convolution in float64: (cin, h, w) -> (cout, h, w); the
    activation (relu, or r >= 0 ? r : slopes[o] * r) before the residual add."""
    cout, cin, k, _ = w.shape
    p = k // 2
    h, wd = x.shape[1:]
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p)))
    out = np.zeros((cout, h, wd))
    for ky in range(k):
        for kx in range(k):
            out += np.einsum("oi,ihw->ohw", w[:, :, ky, kx], xp[:, ky:ky + h, kx:kx + wd])
    if b is not None:
        out += b[:, None, None]
    if relu:
        out = np.maximum(out, 0)
    if slopes is not None:
        out = np.where(out >= 0, out, slopes[:, None, None].astype(np.float64) * out)
    if residual is not None:
        out += residual
    return out


def kernels_of(fmt=None):
    """The f32 kernels (the bf16 ones: tests/test_bf16_kernels.py)."""
    ks = [k for k in _core.kernels()
          if (fmt is None or k["format"] == fmt) and k["precision"] == "f32"]
    return [pytest.param(k, id=k["name"]) for k in ks]


def test_every_format_has_a_weight_maker():
    assert {k["format"] for k in _core.kernels()} <= set(WEIGHT_MAKERS)


def test_every_kernel_has_a_scalar_twin():
    table = _core.kernels()
    scalar = {(k["format"], k["precision"], k["ksize"]) for k in table if k["isa"] == "scalar"}
    for k in table:
        assert (k["format"], k["precision"], k["ksize"]) in scalar, k["name"]


def _run(layer, x, cout_total, pixels, fill=None, **kw):
    fi = _core.Feature.from_numpy(x)
    fo = _core.Feature.from_numpy(fill) if fill is not None else _core.Feature(cout_total, *x.shape[1:])
    res = kw.pop("residual", None)
    fr = _core.Feature.from_numpy(res) if res is not None else None
    layer(fi.view(), fo.view(), pixels, residual=fr.view() if fr is not None else None, **kw)
    return fo.numpy()


SHAPES = [  # (cout, cin, h, w)
    (8, 3, 1, 1), (16, 16, 3, 17), (64, 64, 13, 53), (12, 64, 7, 49), (5, 7, 9, 96),
    (64, 256, 5, 33), (2, 16, 4, 4),
    (16, 16, 3, 419), (9, 64, 2, 530)]  # several dense bands (192 px) per row


@pytest.mark.parametrize("kernel", kernels_of())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(kernel, shape):
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    cout, cin, h, w = shape
    k = kernel["ksize"]
    rng = np.random.default_rng(hash((kernel["name"], shape)) % 2**32)
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, k)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"], **options)
    assert layer.kernel == kernel["name"]
    twin = _core.Conv2d(weights, bias, isa="scalar", format=kernel["format"], **options)
    full = _core.PixelSet.full(h, w)
    ref = reference_conv(x, weights, bias)
    got = _run(layer, x, cout, full)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, _run(twin, x, cout, full), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", kernels_of())
def test_kernel_runs_prefixes_relu_residual(kernel):
    """Only the given pixels and the first cout outputs are written, only the
    first cin inputs are read; ReLU comes before the residual add."""
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    cout, cin, h, w = 24, 32, 11, 70
    k = kernel["ksize"]
    rng = np.random.default_rng(7)
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, k)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    residual = rng.standard_normal((cout, h, w)).astype(np.float32)
    before = rng.standard_normal((cout, h, w)).astype(np.float32)
    mask = rng.random((h, w)) < 0.4
    mask[3] = True          # a full row
    mask[4] = False         # an empty row
    mask[5, 20:69] = True   # a run longer than any tile
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"], **options)
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    assert pixels.count == mask.sum()
    use_cin, use_cout = 20, 13
    got = _run(layer, x, cout, pixels, fill=before, relu=True, cin=use_cin, cout=use_cout,
               residual=residual)
    ref = reference_conv(x[:use_cin], weights[:use_cout, :use_cin], bias[:use_cout], relu=True,
                         residual=residual[:use_cout])
    expect = before.copy()
    expect[:use_cout][:, mask] = ref[:, mask]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", kernels_of())
def test_kernel_with_complement_covers_the_image(kernel):
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    rng = np.random.default_rng(3)
    cout, cin, h, w = 16, 16, 9, 37
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, kernel["ksize"])
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    mask = rng.random((h - 1, w - 1)) < 0.5   # smaller than the image, as SMSR's odd sizes
    layer = _core.Conv2d(weights, None, isa=kernel["isa"], format=kernel["format"], **options)
    inside = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    outside = inside.complement()
    assert inside.count + outside.count == h * w
    fi, fo = _core.Feature.from_numpy(x), _core.Feature(cout, h, w)
    layer(fi.view(), fo.view(), inside)
    layer(fi.view(), fo.view(), outside)
    np.testing.assert_allclose(fo.numpy(), reference_conv(x, weights, None), rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_refused():
    w = np.zeros((4, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match="5x5"):
        _core.Conv2d(np.zeros((4, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="bias"):
        _core.Conv2d(w, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="unknown ISA"):
        _core.Conv2d(w, isa="sse9")
    layer = _core.Conv2d(w)
    a, b = _core.Feature(4, 5, 5), _core.Feature(4, 6, 5)
    with pytest.raises(ValueError, match="sizes differ"):
        layer(a.view(), b.view(), _core.PixelSet.full(5, 5))
    with pytest.raises(ValueError, match="input channels"):
        layer(_core.Feature(3, 5, 5).view(), a.view(), _core.PixelSet.full(5, 5))
    with pytest.raises(ValueError, match="pixel set"):
        layer(a.view(), _core.Feature(4, 5, 5).view(), _core.PixelSet.full(4, 5))


def _in_subprocess(code, **env):
    full_env = dict(os.environ, **env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env)
    return r


@pytest.mark.parametrize("level", LEVELS)
def test_forced_level_is_used(level):
    """SPARSR_ISA lowers the level for the whole process: the kernels chosen and
    their results follow it (the scalar path runs on any x86-64 CPU)."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    code = (
        "import numpy as np, sparsr\n"
        "from sparsr import _core\n"
        "info = sparsr.cpu_info()\n"
        "rng = np.random.default_rng(0)\n"
        "w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)\n"
        "x = rng.standard_normal((8, 9, 41)).astype(np.float32)\n"
        "layer = _core.Conv2d(w)\n"
        "fi, fo = _core.Feature.from_numpy(x), _core.Feature(16, 9, 41)\n"
        "layer(fi.view(), fo.view(), _core.PixelSet.full(9, 41))\n"
        "print(info['active_isa'], layer.kernel, float(np.abs(fo.numpy()).sum()))\n")
    r = _in_subprocess(code, SPARSR_ISA=level)
    assert r.returncode == 0, r.stderr
    active, kernel, checksum = r.stdout.split()
    assert active == level
    assert kernel.endswith("_" + level)
    base = _in_subprocess(code, SPARSR_ISA="scalar")
    assert float(checksum) == pytest.approx(float(base.stdout.split()[2]), rel=1e-5)


def test_forcing_a_higher_level_cannot_exceed_the_cpu():
    r = _in_subprocess("from sparsr import _core; print(_core.active_isa(), _core.detected_isa())",
                       SPARSR_ISA="amx")
    active, detected = r.stdout.split()
    assert active == detected


def test_unknown_level_is_a_clear_error():
    r = _in_subprocess("import sparsr, numpy as np; sparsr._core.Conv2d(np.zeros((1,1,3,3),'f'))",
                       SPARSR_ISA="avx9000")
    assert r.returncode != 0
    assert "unknown ISA level 'avx9000'" in r.stderr


def test_threads_give_identical_results():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    x = rng.standard_normal((32, 40, 90)).astype(np.float32)
    layer = _core.Conv2d(w)
    outs = []
    old = _core.num_threads()
    try:
        for n in (1, 2, 3):
            _core.set_num_threads(n)
            outs.append(_run(layer, x, 32, _core.PixelSet.full(40, 90)))
    finally:
        _core.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("level", ["scalar", "avx2"])
def test_kernel_suite_on_a_lower_level_machine(level):
    """The whole kernel suite, run as on a CPU that has only `level`: with
    SPARSR_ISA set, higher levels count as unsupported and are skipped."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    if os.environ.get("SPARSR_ISA"):
        pytest.skip("already running under a forced level")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        __file__, "-k", "not lower_level"],
                       capture_output=True, text=True, env=dict(os.environ, SPARSR_ISA=level))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert " passed" in r.stdout


@pytest.mark.parametrize("kernel", kernels_of())
@pytest.mark.parametrize("density", [0.05, 0.3, 0.7])
def test_sparse_pixel_sets_gathered_and_accumulated(kernel, density):
    """Pixel sets of short runs go through gather -> convolve -> scatter; with the
    output as its own residual the result is added (relu first)."""
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    rng = np.random.default_rng(int(density * 100))
    cout, cin, h, w = 20, 24, 15, 77
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, kernel["ksize"])
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    before = rng.standard_normal((cout, h, w)).astype(np.float32)
    mask = rng.random((h, w)) < density
    mask[0, :] = True    # one long run among the short ones
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    assert _core.Conv2d.use_gather(pixels) == (pixels.count < 16 * pixels.n_runs)
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"], **options)
    fi, fo = _core.Feature.from_numpy(x), _core.Feature.from_numpy(before)
    layer(fi.view(), fo.view(), pixels, relu=True, cin=17, cout=11, residual=fo.view())
    ref = reference_conv(x[:17], weights[:11, :17], bias[:11], relu=True)
    expect = before.copy()
    expect[:11][:, mask] += ref[:, mask]
    np.testing.assert_allclose(fo.numpy(), expect, rtol=1e-4, atol=1e-4)


def negative_slopes(rng, cout):
    """Slopes of a PReLU: mostly small, some negative, zero, one and above one."""
    s = rng.uniform(-0.3, 0.5, cout).astype(np.float32)
    s[:4] = [0.0, 1.0, 1.7, -1.0][:cout]
    return s


# (name, mask density or None for every pixel, residual: None, "separate" or "output")
SLOPE_CASES = [
    ("in-place", None, None),
    ("in-place-residual", None, "separate"),
    ("in-place-runs-residual", 0.6, "separate"),   # a residual never gathers
    ("gathered", 0.1, None),
    ("gathered-accumulated", 0.3, "output"),
]


@pytest.mark.parametrize("kernel", kernels_of())
@pytest.mark.parametrize("case", SLOPE_CASES, ids=lambda c: c[0])
def test_kernel_negative_slopes(kernel, case):
    """Per output channel negative slopes (leaky ReLU, PReLU) in the epilogue:
    against the float64 reference and the scalar twin, on channel prefixes,
    before the residual add, in place and gathered."""
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    _, density, residual = case
    rng = np.random.default_rng(zlib.crc32(f"{kernel['name']}{case}".encode()))
    cout, cin, h, w = 20, 24, 13, 83
    use_cin, use_cout = 19, 17
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, kernel["ksize"])
    bias = rng.standard_normal(cout).astype(np.float32)
    slopes = negative_slopes(rng, cout)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    before = rng.standard_normal((cout, h, w)).astype(np.float32)
    mask = np.ones((h, w), bool) if density is None else rng.random((h, w)) < density
    mask[2, :] = True      # one long run among the short ones
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    if residual != "separate":   # a separate residual runs in place whatever the runs
        assert _core.Conv2d.use_gather(pixels) == (density is not None)
    res = rng.standard_normal((cout, h, w)).astype(np.float32) if residual == "separate" else None

    def run(layer):
        fi, fo = _core.Feature.from_numpy(x), _core.Feature.from_numpy(before)
        fr = _core.Feature.from_numpy(res).view() if res is not None else None
        layer(fi.view(), fo.view(), pixels, cin=use_cin, cout=use_cout, slopes=slopes,
              residual=fo.view() if residual == "output" else fr)
        return fo.numpy()

    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"], **options)
    twin = _core.Conv2d(weights, bias, isa="scalar", format=kernel["format"], **options)
    got = run(layer)
    ref = reference_conv(x[:use_cin], weights[:use_cout, :use_cin], bias[:use_cout],
                         slopes=slopes[:use_cout],
                         residual=None if res is None else res[:use_cout])
    expect = before.astype(np.float64)
    if residual == "output":
        expect[:use_cout][:, mask] += ref[:, mask]
    else:
        expect[:use_cout][:, mask] = ref[:, mask]
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, run(twin), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", kernels_of())
def test_kernel_slopes_of_one_and_zero_are_identity_and_relu(kernel):
    """Slopes 1 give the plain conv and slopes 0 the ReLU exactly (one rounding
    of slope * r, no other change to the sum)."""
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    rng = np.random.default_rng(9)
    cout, cin, h, w = 16, 16, 7, 61
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, kernel["ksize"])
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"], **options)
    full = _core.PixelSet.full(h, w)
    plain = _run(layer, x, cout, full)
    np.testing.assert_array_equal(_run(layer, x, cout, full, slopes=np.ones(cout, np.float32)),
                                  plain)
    np.testing.assert_array_equal(_run(layer, x, cout, full, slopes=np.zeros(cout, np.float32)),
                                  _run(layer, x, cout, full, relu=True))


def test_bad_slopes_are_refused():
    layer = _core.Conv2d(np.zeros((4, 3, 3, 3), np.float32))
    a, b = _core.Feature(3, 5, 5), _core.Feature(4, 5, 5)
    full = _core.PixelSet.full(5, 5)
    with pytest.raises(ValueError, match=r"one value per output channel \(4\), got 3 values"):
        layer(a.view(), b.view(), full, slopes=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="got a 2-D array"):
        layer(a.view(), b.view(), full, slopes=np.zeros((4, 1), np.float32))
    with pytest.raises(ValueError, match="exclusive"):
        layer(a.view(), b.view(), full, relu=True, slopes=np.zeros(4, np.float32))
    # The layer's own cout, also when the call writes a prefix of the outputs.
    layer(a.view(), b.view(), full, cout=2, slopes=np.zeros(4, np.float32))


def test_feature_written_planes_keep_zero_borders():
    """Feature(written=k): planes from k on and the borders of every plane are
    zero even on a reused pool buffer, so a 3x3 over written planes reads zero
    padding; k outside [0, channels] is refused."""
    c, h, w = 8, 200, 700                       # > 1 MB: a pooled buffer, rows of 704
    # Same bytes, rows of 352: its NaN interior lies on the new feature's top
    # border and right border columns when the pool hands the buffer back.
    junk = _core.Feature.from_numpy(np.full((c, 402, 350), np.nan, np.float32))
    del junk
    f = _core.Feature(c, h, w, written=5)
    x = np.random.default_rng(0).standard_normal((5, h, w)).astype(np.float32)
    src = _core.Feature.from_numpy(x)
    ident = np.zeros((5, 5, 1, 1), np.float32)
    ident[np.arange(5), np.arange(5)] = 1.0
    _core.Conv2d(ident, None)(src.view(), f.view(list(range(5))), _core.PixelSet.full(h, w))
    out = f.numpy()
    np.testing.assert_array_equal(out[:5], x)
    assert not np.any(out[5:])                  # never written: zero
    # A 3x3 that reads the written planes sees zero borders (no NaN from the pool).
    ones = np.ones((1, 5, 3, 3), np.float32)
    dst = _core.Feature(1, h, w)
    _core.Conv2d(ones, None)(f.view(list(range(5))), dst.view(), _core.PixelSet.full(h, w))
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    expect = sum(pad[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)).sum(0)
    np.testing.assert_allclose(dst.numpy()[0], expect, rtol=1e-4, atol=1e-3)
    for bad in (-1, c + 1):
        with pytest.raises(ValueError, match="written planes"):
            _core.Feature(c, h, w, written=bad)


@pytest.mark.parametrize("kernel", [k for k in kernels_of() if k.values[0]["isa"] != "scalar"])
def test_large_outputs_streamed_past_the_caches(kernel):
    """An output above 16 MB is stored with non-temporal stores where whole
    vectors are written: the pixels of the set match the dense kernel of the
    same level, and no pixel outside the set is touched (NaN stays NaN)."""
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    rng = np.random.default_rng(11)
    cout, cin, h, w = 64, 64, 260, 280           # 64 x 260 x 280 floats: 18.6 MB
    k = kernel["ksize"]
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, k)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    mask = np.ones((h, w), bool)
    mask[40:90, 13:61] = False                   # holes: vectors partly in the set
    mask[200:203, :] = False
    mask[:, 151] = False
    pixels = _core.PixelSet.from_mask(mask.astype(np.uint8), h, w)
    assert pixels.count * cout * 4 > 16 << 20
    layer = _core.Conv2d(weights, None, isa=kernel["isa"], format=kernel["format"], **options)
    dense = _core.Conv2d(weights, None, isa=kernel["isa"], format="dense")
    got = _run(layer, x, cout, pixels, fill=np.full((cout, h, w), np.nan, np.float32), relu=True)
    expect = _run(dense, x, cout, _core.PixelSet.full(h, w), relu=True)
    assert np.isnan(got[:, ~mask]).all()
    np.testing.assert_allclose(got[:, mask], expect[:, mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", kernels_of())
def test_kernel_reading_no_input_channel_writes_the_bias(kernel):
    """cin = 0 (an SMSR layer whose inputs are all sparse at unimportant
    pixels) leaves only the bias, through ReLU."""
    if not _core.isa_supported(kernel["isa"]):
        pytest.skip(f"this CPU lacks {kernel['isa']}")
    rng = np.random.default_rng(5)
    cout, cin, h, w = 12, 16, 5, 41
    weights, options = WEIGHT_MAKERS[kernel["format"]](rng, cout, cin, kernel["ksize"])
    bias = rng.standard_normal(cout).astype(np.float32)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    layer = _core.Conv2d(weights, bias, isa=kernel["isa"], format=kernel["format"], **options)
    got = _run(layer, x, cout, _core.PixelSet.full(h, w), relu=True, cin=0)
    np.testing.assert_array_equal(got, np.broadcast_to(np.maximum(bias, 0)[:, None, None], got.shape))


@pytest.mark.parametrize("level", ["avx2", "avx512"])
def test_fma_peak_with_loads_is_below_the_register_peak(level):
    """The benchmarks' two ceilings: FMAs that each load a vector from L1 run
    at most as fast as register-only FMAs (one vector load per FMA is what a
    sparse kernel pays), and both are measured, positive rates."""
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    # Interleaved rounds: on a shared machine one round of either can be slowed.
    peaks, loads = [], []
    for _ in range(3):
        peaks.append(_peak.fma_peak_gflops(level, 0.1))
        loads.append(_peak.fma_peak_gflops(level, 0.1, loads=True))
    assert min(peaks) > 0 and min(loads) > 0
    assert min(loads) <= 1.1 * max(peaks)
