"""The elementwise operators of _core (unary, binary, binary_const,
global_stats) at every ISA level against float64 PyTorch / numpy references.

Tolerances: relu, leaky_relu, prelu, clamp and add/sub/mul are exact (equal
to the float32 numpy result); sigmoid, silu, tanh and the two GELUs are within
4e-6 relative of float64 PyTorch (measured: 2.3e-7 for sigmoid / silu / tanh,
2.4e-6 for the GELUs near x = -5, where they are about -1e-6), plus 1e-12
absolute for results PyTorch gives as subnormals; means and stds within 1e-6
relative."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from op_testing import LEVELS, SHAPES, border_is_zero, empty, feature, random
from sparsr import _core

torch = pytest.importorskip("torch", reason="the references are PyTorch's")
F = torch.nn.functional

SMOOTH = {
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}
RTOL, ATOL = 4e-6, 1e-12

# Where approximations break: 0 and its neighbours, the tanh polynomial's
# switch at 0.625, exp's range ends (+-87.3, 88), and far beyond.
EDGES = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-4, -1e-4, 0.6249, 0.625, -0.625, 5.0, -5.0,
                  20.0, -20.0, 44.0, -44.0, 87.3, -87.3, 88.5, -88.5, 100.0, -100.0, 1e4,
                  -1e4, 1e30, -1e30, 3.4e38, -3.4e38], np.float32)


def smooth_reference(kind, x):
    return SMOOTH[kind](torch.from_numpy(x.astype(np.float64))).numpy()


def assert_close_relative(got, want):
    assert not np.isnan(got).any()
    err = np.abs(got.astype(np.float64) - want)
    assert (err <= RTOL * np.abs(want) + ATOL).all(), f"max error {err.max():.3g}"


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("kind", list(SMOOTH))
@pytest.mark.parametrize("shape", SHAPES)
def test_smooth_activations_match_float64(kind, isa, shape):
    rng = np.random.default_rng([list(SMOOTH).index(kind), SHAPES.index(shape)])
    x = random(rng, shape, scale=4.0)
    dst = empty(shape)
    _core.unary(kind, feature(x), dst, isa=isa)
    assert_close_relative(dst.numpy(), smooth_reference(kind, x))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("kind", list(SMOOTH))
def test_smooth_activations_at_edges_and_huge_inputs(kind, isa):
    # A row of 27 values: the vector loops and their tails both see edges.
    x = np.stack([EDGES, EDGES[::-1]])[:, None, :]
    dst = empty(x.shape)
    _core.unary(kind, feature(x), dst, isa=isa)
    got = dst.numpy()
    assert np.isfinite(got).all()
    assert_close_relative(got, smooth_reference(kind, x))


@pytest.mark.parametrize("isa", LEVELS)
def test_smooth_activations_dense_sweep(isa):
    """Every 1e-3 over [-30, 30]: the approximations hold between samples too."""
    x = np.linspace(-30, 30, 60001, dtype=np.float32).reshape(1, 1, -1)
    dst = empty(x.shape)
    for kind in SMOOTH:
        _core.unary(kind, feature(x), dst, isa=isa)
        assert_close_relative(dst.numpy(), smooth_reference(kind, x))


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_piecewise_activations_are_exact(isa, shape):
    rng = np.random.default_rng(7)
    x = random(rng, shape, scale=3.0)
    c = shape[0]
    slopes = random(rng, c)
    one = np.float32(0.2)
    cases = [
        (dict(kind="relu"), np.maximum(x, 0)),
        (dict(kind="leaky_relu", alpha=0.2), np.where(x > 0, x, x * one)),
        (dict(kind="prelu", slopes=slopes), np.where(x > 0, x, x * slopes[:, None, None])),
        (dict(kind="prelu", slopes=[0.2]), np.where(x > 0, x, x * one)),
        (dict(kind="clamp", alpha=-1.0, beta=0.5), np.clip(x, -1.0, 0.5)),
        (dict(kind="clamp", alpha=-0.5, beta=np.inf), np.maximum(x, -0.5)),
        (dict(kind="clamp", alpha=-np.inf, beta=0.25), np.minimum(x, 0.25)),
        # min > max: everything becomes max, as torch.clamp documents.
        (dict(kind="clamp", alpha=1.0, beta=-1.0), np.full_like(x, -1.0)),
    ]
    for args, want in cases:
        dst = empty(shape)
        _core.unary(src=feature(x), dst=dst, isa=isa, **args)
        np.testing.assert_array_equal(dst.numpy(), want, err_msg=str(args))


@pytest.mark.parametrize("isa", LEVELS)
def test_relu_and_clamp_pass_nan_through(isa):
    x = np.array([[[np.nan, -1.0, 2.0]]], np.float32)
    for args in (dict(kind="relu"), dict(kind="clamp", alpha=0.0, beta=1.0)):
        dst = empty(x.shape)
        _core.unary(src=feature(x), dst=dst, isa=isa, **args)
        assert np.isnan(dst.numpy()[0, 0, 0]), args


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "sigmoid", "gelu", "tanh", "clamp"])
def test_unary_in_place(kind, isa):
    rng = np.random.default_rng(3)
    x = random(rng, (6, 5, 33), scale=3.0)
    args = dict(alpha=-0.5, beta=0.5) if kind == "clamp" else dict(alpha=0.1)
    out = empty(x.shape)
    _core.unary(kind, feature(x), out, isa=isa, **args)
    inplace = feature(x)
    _core.unary(kind, inplace, inplace, isa=isa, **args)
    np.testing.assert_array_equal(inplace.numpy(), out.numpy())


@pytest.mark.parametrize("isa", LEVELS)
def test_border_stays_zero(isa):
    # sigmoid(0) = 0.5 and x + 1 would show on a border that was written.
    x = feature(random(np.random.default_rng(0), (3, 4, 17)))
    _core.unary("sigmoid", x, x, isa=isa)
    assert border_is_zero(x)
    _core.binary_const("add", x, 1.0, x, isa=isa)
    assert border_is_zero(x)


def test_isa_environment_lowers_the_default_level(tmp_path):
    """SPARSR_ISA=scalar in a process: isa=None and a higher isa both run the
    scalar loops, equal to isa='scalar' here."""
    x = np.linspace(-10, 10, 999, dtype=np.float32).reshape(1, 3, 333)
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np; from sparsr import _core; import sys\n"
            f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
            "a = _core.Feature(*x.shape).view(); b = _core.Feature(*x.shape).view()\n"
            "src = _core.Feature.from_numpy(x).view()\n"
            "_core.unary('gelu', src, a); _core.unary('gelu', src, b, isa='avx512')\n"
            f"np.save({str(tmp_path / 'a.npy')!r}, a.numpy()); "
            f"np.save({str(tmp_path / 'b.npy')!r}, b.numpy())\n")
    env = {**os.environ, "SPARSR_ISA": "scalar"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    want = empty(x.shape)
    _core.unary("gelu", feature(x), want, isa="scalar")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), want.numpy())


# ---------------------------------------------------------------- add/sub/mul

OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply}


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("kind", list(OPS))
@pytest.mark.parametrize("shape", SHAPES)
def test_binary_forms_are_exact(kind, isa, shape):
    rng = np.random.default_rng(11)
    c = shape[0]
    a, b = random(rng, shape), random(rng, shape)
    per_channel, single = random(rng, (c, 1, 1)), random(rng, (1, 1, 1))
    cases = [(a, b), (a, per_channel), (a, single), (per_channel, b), (single, b)]
    for x, y in cases:
        dst = empty(shape)
        _core.binary(kind, feature(x), feature(y), dst, isa=isa)
        np.testing.assert_array_equal(dst.numpy(), OPS[kind](x, y), err_msg=f"{x.shape} {y.shape}")


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("kind", list(OPS))
def test_binary_const_forms_are_exact(kind, isa):
    rng = np.random.default_rng(12)
    shape = (5, 3, 19)
    a = random(rng, shape)
    values = random(rng, 5)
    for v, reverse in [(values, False), (values, True), (np.float32(1.5), False),
                       (np.float32(1.5), True), (values[:1], False)]:
        dst = empty(shape)
        _core.binary_const(kind, feature(a), v, dst, reverse=reverse, isa=isa)
        vb = np.reshape(v, (-1, 1, 1))
        want = OPS[kind](vb, a) if reverse else OPS[kind](a, vb)
        np.testing.assert_array_equal(dst.numpy(), want, err_msg=f"{v} reverse={reverse}")


@pytest.mark.parametrize("isa", LEVELS)
def test_binary_output_may_alias_an_input(isa):
    rng = np.random.default_rng(13)
    a, b, v = random(rng, (4, 3, 17)), random(rng, (4, 3, 17)), random(rng, (4, 1, 1))
    for kind, fn in OPS.items():
        x, y = feature(a), feature(b)
        _core.binary(kind, x, y, x, isa=isa)          # into a
        np.testing.assert_array_equal(x.numpy(), fn(a, b))
        _core.binary(kind, feature(a), y, y, isa=isa)  # into b
        np.testing.assert_array_equal(y.numpy(), fn(a, b))
        y = feature(b)
        _core.binary(kind, feature(v), y, y, isa=isa)  # broadcast a, into b
        np.testing.assert_array_equal(y.numpy(), fn(v, b))
        x = feature(a)
        _core.binary(kind, x, x, x, isa=isa)          # x op x
        np.testing.assert_array_equal(x.numpy(), fn(a, a))


# ---------------------------------------------------------------- statistics

@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("shape", SHAPES + [(3, 64, 65)])
def test_global_stats_match_float64(isa, shape):
    rng = np.random.default_rng(21)
    # A large mean against the spread: E[x^2] - E[x]^2 would cancel in float.
    x = (random(rng, shape) * 0.01 + 1000.0 * rng.standard_normal((shape[0], 1, 1))).astype(np.float32)
    c = shape[0]
    mean, std = empty((c, 1, 1)), empty((c, 1, 1))
    _core.global_stats(feature(x), mean=mean, std=std, isa=isa)
    x64 = x.astype(np.float64)
    want_mean = x64.mean(axis=(1, 2))
    want_std = np.sqrt(((x64 - want_mean[:, None, None]) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(mean.numpy()[:, 0, 0], want_mean, rtol=1e-6)
    np.testing.assert_allclose(std.numpy()[:, 0, 0], want_std, rtol=1e-6, atol=1e-12)


def test_global_stats_either_output():
    x = random(np.random.default_rng(22), (3, 4, 5))
    mean, std = empty((3, 1, 1)), empty((3, 1, 1))
    _core.global_stats(feature(x), mean=mean)
    _core.global_stats(feature(x), std=std)
    np.testing.assert_allclose(mean.numpy().ravel(), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std.numpy().ravel(), x.std(axis=(1, 2)), rtol=1e-6)
    _core.global_stats(feature(x))  # nothing asked: nothing written, no error


# ---------------------------------------------------------------- refusals

def test_refusals_name_the_problem():
    x = feature(np.zeros((4, 3, 5), np.float32))
    cases = [
        (lambda: _core.unary("relu", x, empty((4, 3, 6))), "differs from the input's"),
        (lambda: _core.unary("relu", x, empty((3, 3, 5))), r"\(3, 3, 5\) differs"),
        (lambda: _core.unary("softplus", x, x), "unknown unary op 'softplus'"),
        (lambda: _core.unary("prelu", x, x, slopes=np.ones(3, np.float32)),
         "prelu: 3 slopes for 4 channels"),
        (lambda: _core.unary("prelu", x, x), "prelu needs its slopes"),
        (lambda: _core.unary("clamp", x, x, alpha=np.nan), "must not be NaN"),
        (lambda: _core.unary("relu", x, x.select([1, 0, 2, 3])), "overlaps an input"),
        (lambda: _core.unary("relu", x, empty((4, 3, 5)).select([0, 0, 1, 2])),
         "lists one plane twice"),
        (lambda: _core.unary("relu", x, x, isa="avx9000"), "unknown ISA level 'avx9000'"),
        (lambda: _core.binary("div", x, x, x), "unknown binary op 'div'"),
        (lambda: _core.binary("add", x, feature(np.zeros((4, 3, 4), np.float32)), x),
         r"operand shape \(4, 3, 4\) does not match"),
        (lambda: _core.binary("add", x, feature(np.zeros((2, 1, 1), np.float32)), x),
         r"\(2, 1, 1\) does not match"),
        (lambda: _core.binary("add", feature(np.zeros((4, 1, 1), np.float32)),
                              feature(np.zeros((1, 1, 1), np.float32)), x),
         "both operands"),
        (lambda: _core.binary_const("mul", x, np.ones(3, np.float32), x),
         "3 values for 4 channels"),
        (lambda: _core.global_stats(x, mean=empty((4, 2, 1))), r"must be \(4, 1, 1\)"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
