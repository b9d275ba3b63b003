"""Max and average pooling (_core.max_pool / avg_pool and the max_pool /
avg_pool ops) against torch.nn.functional in float64. Pooling has one portable
path (no ISA variants), checked here at the active level and under
SPARSR_ISA=scalar in a subprocess. Tolerance: max |error| <= 1e-5 * (1 + max |ref|)."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sparsr import _core
from sparsr.errors import CheckpointError
from sparsr.graph import Node
from sparsr.ops import OPS, BuildContext

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-5
NATIVE = {"max_pool": _core.max_pool, "avg_pool": _core.avg_pool}


def channels(a: np.ndarray):
    return _core.Feature.from_numpy(np.asarray(a, dtype=np.float32)).view()


def torch_pool(kind, x, kernel, stride, padding):
    t = torch.from_numpy(x)[None]
    if kind == "max_pool":
        return F.max_pool2d(t, kernel, stride, padding)[0].numpy()
    return F.avg_pool2d(t, kernel, stride, padding, count_include_pad=True)[0].numpy()


def assert_close(got, ref, what):
    assert got.shape == ref.shape, what
    err = np.abs(got - ref).max()
    assert err <= TOL * (1.0 + np.abs(ref).max()), f"{what}: max error {err:.3g}"


# (kernel, stride, padding, (h, w))
CASES = [
    (7, 3, 0, (30, 45)),            # RFDN/RLFN ESA
    (7, 3, 3, (13, 8)),
    (2, 2, 0, (9, 11)),             # odd sizes, floor
    (3, 1, 1, (5, 6)),
    (3, 2, 1, (1, 1)),              # 1-pixel image
    (1, 1, 0, (1, 7)),
    (2, 1, 1, (1, 1)),
    ((3, 5), (2, 3), (1, 2), (10, 17)),
    ((1, 4), (1, 4), 0, (3, 16)),
    (5, 4, 2, (23, 19)),
]


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_pool_matches_torch(kind, case):
    kernel, stride, padding, (h, w) = case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    x = rng.standard_normal((5, h, w))
    ref = torch_pool(kind, x, kernel, stride, padding)
    assert _core.pool_out_size(h, w, kernel, stride, padding) == ref.shape[1:]
    out = _core.Feature(5, *ref.shape[1:]).view()
    NATIVE[kind](channels(x), out, kernel, stride, padding)
    assert_close(out.numpy(), ref, f"{kind} {case}")


def test_stride_defaults_to_kernel():
    x = np.arange(2 * 6 * 9, dtype=np.float64).reshape(2, 6, 9)
    out = _core.Feature(2, 2, 3).view()
    _core.max_pool(channels(x), out, 3)
    assert_close(out.numpy(), torch_pool("max_pool", x, 3, 3, 0), "default stride")


def test_max_pool_pads_with_minus_infinity():
    x = -np.ones((1, 2, 2)) * 5.0
    out = _core.Feature(1, 2, 2).view()
    _core.max_pool(channels(x), out, 3, 1, 1)
    assert (out.numpy() == -5.0).all()


def test_pooling_under_scalar_level():
    code = ("import numpy as np; from sparsr import _core\n"
            "assert _core.active_isa() == 'scalar'\n"
            "x = _core.Feature.from_numpy(np.arange(24, dtype=np.float32).reshape(1, 4, 6)).view()\n"
            "o = _core.Feature(1, 2, 3).view(); _core.avg_pool(x, o, 2)\n"
            "assert np.allclose(o.numpy(), [[[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]]]), o.numpy()\n")
    subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SPARSR_ISA="scalar"),
                   check=True)


@pytest.mark.parametrize("kernel, stride, padding, size, message", [
    (3, 1, 2, (8, 8), "padding 2x2 must be at most half the kernel 3x3"),
    (5, 1, 0, (4, 9), "a 4x9 input is smaller than the 5x5 window"),
    (0, 1, 0, (4, 4), "kernel must be in [1, 64], got 0x0"),
    (2, 0, 0, (4, 4), "stride must be positive, got 0x0"),
    ((2, 2, 2), 1, 0, (4, 4), "kernel must be an int or a pair of ints"),
])
def test_pool_refuses_windows(kernel, stride, padding, size, message):
    with pytest.raises(ValueError) as info:
        _core.pool_out_size(*size, kernel, stride, padding)
    assert message in str(info.value)
    with pytest.raises(ValueError) as info:
        _core.max_pool(channels(np.ones((1, *size))), _core.Feature(1, 1, 1).view(), kernel,
                       stride, padding)
    assert message in str(info.value)


def test_pool_refuses_outputs():
    x = channels(np.ones((3, 9, 9)))
    with pytest.raises(ValueError, match="avg_pool: output is 4x5 but a 9x9 input gives 4x4"):
        _core.avg_pool(x, _core.Feature(3, 4, 5).view(), 2)
    with pytest.raises(ValueError, match="max_pool: output has 2 channels, the input 3"):
        _core.max_pool(x, _core.Feature(2, 4, 4).view(), 2)
    same = _core.Feature(1, 4, 4)
    with pytest.raises(ValueError, match="output shares a plane with the input"):
        _core.max_pool(same.view(), same.view(), 3, 1, 1)


# ------------------------------------------------------- the graph op classes


class Runtime:
    mode, isa = "dense", None

    def new(self, channels_, height, width, written=0):
        return _core.Feature(channels_, height, width, written).view()


def make_op(kind, attrs):
    return OPS[kind](Node(kind, "pool", ["x"], ["y"], attrs), BuildContext({}, {}, None))


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
def test_pool_op_esa(kind):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 29, 44))
    op = make_op(kind, {"kernel": 7, "stride": 3})
    assert op.infer([(16, 29, 44)]) == [(16, 8, 13)]
    (out,) = op.run(Runtime(), [channels(x)])
    assert_close(out.numpy(), torch_pool(kind, x, 7, 3, 0), kind)
    assert op.macs([(16, 29, 44)]) == 0


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
def test_pool_op_pairs_and_default_stride(kind):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 11, 10))
    op = make_op(kind, {"kernel": [3, 2], "padding": [1, 0], "stride": None})
    shape = op.infer([(3, 11, 10)])[0]
    (out,) = op.run(Runtime(), [channels(x)])
    ref = torch_pool(kind, x, (3, 2), (3, 2), (1, 0))
    assert shape == (3, *ref.shape[1:])
    assert_close(out.numpy(), ref, kind)


@pytest.mark.parametrize("kind, attrs, message", [
    ("max_pool", {}, "lacks its 'kernel' attribute"),
    ("max_pool", {"kernel": 3, "padding": 2},
     "attribute 'padding' [2, 2] must be at most half the kernel [3, 3]"),
    ("avg_pool", {"kernel": 2, "ceil_mode": True}, "ceil_mode is not supported"),
    ("avg_pool", {"kernel": 2, "count_include_pad": False}, "count_include_pad=False"),
    ("avg_pool", {"kernel": 2, "divisor_override": 3}, "divisor_override is not supported"),
    ("max_pool", {"kernel": 2, "dilation": 2}, "a dilated pooling window is not supported"),
    ("max_pool", {"kernel": 2, "stride": 0}, "attribute 'stride' must be in [1, 64], got [0, 0]"),
    ("max_pool", {"kernel": "3"}, "attribute 'kernel' must be an int or a pair of ints"),
])
def test_pool_op_refuses_attrs(kind, attrs, message):
    with pytest.raises(CheckpointError) as info:
        make_op(kind, attrs)
    assert message in str(info.value) and "'pool'" in str(info.value)


def test_pool_op_refuses_small_inputs():
    op = make_op("max_pool", {"kernel": 7, "stride": 3})
    with pytest.raises(ValueError, match="a 5x9 input is smaller than the 7x7 window"):
        op.infer([(4, 5, 9)])
