"""The general and transposed convolutions (_core.ConvGeneral, _core.ConvTranspose
and the conv_transpose2d op) against torch.nn.functional in float64, at every
ISA level this CPU has (isa= argument; SPARSR_ISA in a subprocess for the
default). Tolerance: max |error| <= 1e-4 * (1 + max |reference|)."""

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

LEVELS = ["scalar", "avx2", "avx512"]
TOL = 1e-4


def channels(a: np.ndarray):
    return _core.Feature.from_numpy(np.asarray(a, dtype=np.float32)).view()


def check_isa(isa: str) -> None:
    if not _core.isa_supported(isa):
        pytest.skip(f"{isa} is not available on this CPU (or SPARSR_ISA)")


def assert_close(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert got.shape == ref.shape, what
    err = np.abs(got - ref).max() if ref.size else 0.0
    assert err <= TOL * (1.0 + np.abs(ref).max()), f"{what}: max error {err:.3g}"


def run_conv(isa, x, w, b, stride, padding, dilation, groups, relu=False, residual=None):
    conv = _core.ConvGeneral(w.astype(np.float32), None if b is None else b.astype(np.float32),
                             stride, padding, dilation, groups, isa)
    oh, ow = conv.out_size(x.shape[1], x.shape[2])
    dst = _core.Feature(conv.cout, oh, ow).view()
    conv.run(channels(x), dst, relu, None if residual is None else channels(residual))
    return dst.numpy()


def torch_conv(x, w, b, stride, padding, dilation, groups, relu=False, residual=None):
    y = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w),
                 None if b is None else torch.from_numpy(b), stride, padding, dilation, groups)[0]
    if relu:
        y = y.relu()
    if residual is not None:
        y = y + torch.from_numpy(residual)
    return y.numpy()


# (cin, cout, groups, (kh, kw), stride, padding, dilation, (h, w), relu, residual)
CONV_CASES = [
    (3, 8, 1, (1, 1), 1, 0, 1, (7, 9), False, False),
    (1, 56, 1, (5, 5), 1, 2, 1, (13, 37), False, False),       # FSRCNN head
    (16, 16, 1, (3, 3), 2, 0, 1, (17, 23), False, False),      # ESA stride-2 conv
    (16, 16, 1, (3, 3), 2, 1, 1, (18, 41), True, False),
    (6, 5, 1, (7, 7), 1, 3, 1, (11, 13), False, True),
    (4, 9, 1, (9, 9), 3, 4, 1, (20, 29), True, True),
    (8, 8, 1, (3, 3), 1, 2, 2, (15, 19), False, False),        # dilation 2
    (8, 12, 4, (3, 3), 1, 1, 1, (9, 31), True, True),          # groups 4
    (64, 64, 64, (3, 3), 1, 1, 1, (12, 150), False, False),    # depthwise, several tiles
    (8, 8, 8, (5, 5), 2, 2, 1, (21, 33), True, False),         # depthwise stride 2
    (8, 16, 8, (3, 3), 1, 1, 1, (10, 11), False, True),        # depthwise multiplier 2
    (5, 3, 1, (3, 5), (1, 2), (3, 1), (2, 1), (14, 25), False, False),  # every pair uneven
    (2, 4, 1, (11, 1), (4, 3), (5, 0), 1, (30, 8), False, False),
    (3, 8, 1, (3, 3), 1, 1, 1, (1, 1), True, True),            # 1-pixel image
    (3, 8, 1, (5, 5), 3, 4, 1, (1, 1), False, False),          # padding beyond the border
    (4, 4, 2, (1, 1), 2, 0, 1, (1, 9), False, False),
    (16, 24, 1, (3, 3), 1, 1, 1, (6, 300), True, False),       # long rows: bands of tiles
]


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}g{c[2]}k{c[3]}s{c[4]}")
def test_conv_general_matches_torch(isa, case):
    check_isa(isa)
    cin, cout, groups, kernel, stride, padding, dilation, (h, w), relu, residual = case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    x = rng.standard_normal((cin, h, w))
    weight = rng.standard_normal((cout, cin // groups, *kernel))
    bias = rng.standard_normal(cout)
    ref = torch_conv(x, weight, bias, stride, padding, dilation, groups, relu)
    res = rng.standard_normal(ref.shape) if residual else None
    if res is not None:
        ref = ref + res
    got = run_conv(isa, x, weight, bias, stride, padding, dilation, groups, relu, res)
    assert_close(got, ref, f"{isa} {case}")


@pytest.mark.parametrize("isa", LEVELS)
def test_conv_general_random_shapes(isa):
    check_isa(isa)
    rng = np.random.default_rng(7)
    done = 0
    while done < 40:
        groups = int(rng.choice([1, 2, 4]))
        cin_g = 1 if rng.random() < 0.3 else int(rng.integers(1, 6))
        cout_g = int(rng.choice([1, 3, 4, 8, 9]))
        kh, kw = (int(v) for v in rng.integers(1, 10, 2))
        stride = tuple(int(v) for v in rng.integers(1, 5, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        padding = tuple(int(v) for v in rng.integers(0, 6, 2))
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 70))
        if (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1 < 0
                or w + 2 * padding[1] - dilation[1] * (kw - 1) - 1 < 0):
            continue
        x = rng.standard_normal((cin_g * groups, h, w))
        weight = rng.standard_normal((cout_g * groups, cin_g, kh, kw))
        bias = rng.standard_normal(cout_g * groups) if rng.random() < 0.7 else None
        relu = bool(rng.random() < 0.5)
        args = (weight, bias, stride, padding, dilation, groups)
        assert_close(run_conv(isa, x, *args, relu), torch_conv(x, *args, relu),
                     f"{isa} groups {groups} cin/g {cin_g} cout/g {cout_g} k {kh}x{kw} "
                     f"s {stride} p {padding} d {dilation} {h}x{w}")
        done += 1


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}g{c[2]}k{c[3]}s{c[4]}")
def test_conv_general_negative_slopes_match_torch_prelu(isa, case):
    """The epilogue's per output channel slopes (PReLU, leaky ReLU) before the
    residual add, every block and group its own slopes."""
    check_isa(isa)
    cin, cout, groups, kernel, stride, padding, dilation, (h, w), _, residual = case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()) + 1)
    x = rng.standard_normal((cin, h, w))
    weight = rng.standard_normal((cout, cin // groups, *kernel))
    bias = rng.standard_normal(cout)
    slopes = rng.uniform(-0.5, 1.5, cout).astype(np.float32)
    y = torch.from_numpy(torch_conv(x, weight, bias, stride, padding, dilation, groups))
    ref = F.prelu(y[None], torch.from_numpy(slopes.astype(np.float64)))[0].numpy()
    res = rng.standard_normal(ref.shape) if residual else None
    conv = _core.ConvGeneral(weight.astype(np.float32), bias.astype(np.float32), stride, padding,
                             dilation, groups, isa)
    dst = _core.Feature(cout, *ref.shape[1:]).view()
    conv.run(channels(x), dst, residual=None if res is None else channels(res), slopes=slopes)
    assert_close(dst.numpy(), ref if res is None else ref + res, f"{isa} {case}")


def test_conv_general_slopes_refusals():
    conv = _conv(padding=1)
    x, out = channels(np.ones((2, 6, 7))), _core.Feature(4, 6, 7).view()
    with pytest.raises(ValueError, match=r"one value per output channel \(4\), got 2 values"):
        conv.run(x, out, slopes=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="exclusive"):
        conv.run(x, out, relu=True, slopes=np.ones(4, np.float32))


def test_conv_general_reads_channel_views():
    """Input planes from several features in any order, output a view too."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((3, 9, 14)), rng.standard_normal((2, 9, 14))
    src = _core.Channels.cat([channels(a).select([2, 0]), channels(b), channels(a).select([1])])
    x = np.concatenate([a[[2, 0]], b, a[[1]]])
    weight = rng.standard_normal((4, 5, 3, 3))
    conv = _core.ConvGeneral(weight.astype(np.float32), None, 2, 1)
    out = _core.Feature(6, *conv.out_size(9, 14))
    conv.run(src, out.view([5, 1, 3, 0]))
    ref = torch_conv(x, weight, None, 2, 1, 1, 1)
    assert_close(out.numpy()[[5, 1, 3, 0]], ref, "views")


def test_conv_general_properties():
    conv = _core.ConvGeneral(np.zeros((12, 2, 5, 3), np.float32), None, (2, 1), (2, 1), (1, 2), 3)
    assert (conv.cout, conv.cin, conv.groups) == (12, 6, 3)
    assert conv.kernel == (5, 3) and conv.stride == (2, 1) and conv.padding == (2, 1)
    assert conv.dilation == (1, 2)
    assert conv.out_size(10, 10) == ((10 + 4 - 4 - 1) // 2 + 1, (10 + 2 - 4 - 1) + 1)


def _conv(weight_shape=(4, 2, 3, 3), **kw):
    return _core.ConvGeneral(np.ones(weight_shape, np.float32), **kw)


@pytest.mark.parametrize("make, message", [
    (lambda: _conv((4, 2, 3)), "weight must be (cout, cin / groups, kh, kw)"),
    (lambda: _conv((6, 2, 3, 3), groups=4), "4 groups do not divide 8 inputs and 6 outputs"),
    (lambda: _conv((4, 2, 12, 3)), "kernel must be in [1, 11], got 12x3"),
    (lambda: _conv(stride=(1, 5)), "stride must be in [1, 4], got 1x5"),
    (lambda: _conv(padding=-1), "padding must be in [0, 64], got -1x-1"),
    (lambda: _conv(dilation=0), "dilation must be in [1, 16], got 0x0"),
    (lambda: _conv(stride=(1, 2, 3)), "stride must be an int or a pair of ints"),
    (lambda: _conv(bias=np.ones(3, np.float32)), "bias must have one value per output channel (4)"),
    (lambda: _conv().out_size(2, 5), "a 2x5 input is smaller than the 3x3 kernel"),
    (lambda: _conv(isa="sse9"), "unknown ISA level 'sse9'"),
])
def test_conv_general_refusals(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_conv_general_run_refusals():
    conv = _conv(padding=1)
    x = channels(np.ones((2, 6, 7)))
    with pytest.raises(ValueError, match="output is 6x6 but a 6x7 input gives 6x7"):
        conv.run(x, _core.Feature(4, 6, 6).view())
    with pytest.raises(ValueError, match="input has 3 channels, the layer takes 2"):
        conv.run(channels(np.ones((3, 6, 7))), _core.Feature(4, 6, 7).view())
    with pytest.raises(ValueError, match="output has 5 channels, the layer makes 4"):
        conv.run(x, _core.Feature(5, 6, 7).view())
    with pytest.raises(ValueError, match="residual has 3 channels, the output 4"):
        conv.run(x, _core.Feature(4, 6, 7).view(), residual=_core.Feature(3, 6, 7).view())
    with pytest.raises(ValueError, match="feature sizes differ"):
        conv.run(x, _core.Feature(4, 6, 7).view(), residual=_core.Feature(4, 6, 6).view())
    same = _core.Feature(4, 6, 7)
    with pytest.raises(ValueError, match="output shares a plane with the input"):
        _conv((4, 4, 3, 3), padding=1).run(same.view(), same.view())


def test_isa_forced_by_environment():
    """SPARSR_ISA=scalar makes the default level scalar and refuses a higher one."""
    code = ("import numpy as np; from sparsr import _core\n"
            "w = np.ones((2, 1, 3, 3), np.float32)\n"
            "assert _core.ConvGeneral(w).isa == 'scalar'\n"
            "assert _core.ConvTranspose(w).isa == 'scalar'\n"
            "try:\n    _core.ConvGeneral(w, isa='avx2')\nexcept ValueError as e:\n"
            "    assert 'is not available' in str(e), e\nelse:\n    raise SystemExit('accepted')\n")
    env = dict(os.environ, SPARSR_ISA="scalar")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


# ------------------------------------------------------------ conv_transpose


def torch_deconv(x, w, b, stride, padding, output_padding, groups):
    return F.conv_transpose2d(torch.from_numpy(x)[None], torch.from_numpy(w),
                              None if b is None else torch.from_numpy(b), stride, padding,
                              output_padding, groups)[0].numpy()


def run_deconv(isa, x, w, b, stride, padding, output_padding, groups):
    conv = _core.ConvTranspose(w.astype(np.float32), None if b is None else b.astype(np.float32),
                               stride, padding, output_padding, groups, isa)
    dst = _core.Feature(conv.cout, *conv.out_size(x.shape[1], x.shape[2])).view()
    conv.run(channels(x), dst)
    return dst.numpy()


# (cin, cout, groups, (kh, kw), stride, padding, output_padding, (h, w))
DECONV_CASES = [
    (56, 1, 1, (9, 9), 2, 4, 1, (13, 17)),     # FSRCNN tail
    (16, 16, 1, (3, 3), 2, 1, 1, (9, 12)),     # SMSR
    (3, 5, 1, (1, 1), 1, 0, 0, (4, 6)),
    (4, 6, 2, (5, 5), 3, 2, 2, (7, 10)),
    (4, 4, 4, (3, 3), 2, 1, 0, (8, 9)),        # depthwise
    (2, 3, 1, (7, 4), (4, 3), (3, 1), (3, 0), (5, 8)),
    (6, 8, 1, (11, 11), 4, 6, 3, (6, 50)),     # padding beyond the kernel's reach
    (3, 9, 1, (3, 3), 2, 1, 1, (1, 1)),        # 1-pixel image
    (3, 2, 1, (9, 9), 2, 4, 1, (1, 1)),
    (8, 24, 1, (4, 4), 2, 1, 0, (5, 140)),     # several tiles per phase
]


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("case", DECONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}g{c[2]}k{c[3]}s{c[4]}")
def test_conv_transpose_matches_torch(isa, case):
    check_isa(isa)
    cin, cout, groups, kernel, stride, padding, output_padding, (h, w) = case
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    x = rng.standard_normal((cin, h, w))
    weight = rng.standard_normal((cin, cout // groups, *kernel))
    bias = rng.standard_normal(cout)
    args = (weight, bias, stride, padding, output_padding, groups)
    assert_close(run_deconv(isa, x, *args), torch_deconv(x, *args), f"{isa} {case}")


@pytest.mark.parametrize("isa", LEVELS)
def test_conv_transpose_random_shapes(isa):
    check_isa(isa)
    rng = np.random.default_rng(11)
    done = 0
    while done < 30:
        groups = int(rng.choice([1, 2, 3]))
        cin_g, cout_g = int(rng.integers(1, 6)), int(rng.choice([1, 2, 4, 8, 9]))
        kh, kw = (int(v) for v in rng.integers(1, 12, 2))
        stride = tuple(int(v) for v in rng.integers(1, 5, 2))
        padding = tuple(int(v) for v in rng.integers(0, 6, 2))
        output_padding = tuple(int(rng.integers(0, s)) for s in stride)
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 40))
        if any((n - 1) * s - 2 * p + k + op < 1 for n, s, p, k, op in
               zip((h, w), stride, padding, (kh, kw), output_padding)):
            continue
        x = rng.standard_normal((cin_g * groups, h, w))
        weight = rng.standard_normal((cin_g * groups, cout_g, kh, kw))
        bias = rng.standard_normal(cout_g * groups) if rng.random() < 0.7 else None
        args = (weight, bias, stride, padding, output_padding, groups)
        assert_close(run_deconv(isa, x, *args), torch_deconv(x, *args),
                     f"{isa} groups {groups} {cin_g}->{cout_g} k {kh}x{kw} s {stride} "
                     f"p {padding} op {output_padding} {h}x{w}")
        done += 1


def _deconv(weight_shape=(4, 2, 3, 3), **kw):
    return _core.ConvTranspose(np.ones(weight_shape, np.float32), **kw)


@pytest.mark.parametrize("make, message", [
    (lambda: _deconv((4, 2, 3)), "weight must be (cin, cout / groups, kh, kw)"),
    (lambda: _deconv((6, 2, 3, 3), groups=4), "4 groups do not divide 6 inputs and 8 outputs"),
    (lambda: _deconv(stride=2, output_padding=2), "output padding 2x2 must be below the stride 2x2"),
    (lambda: _deconv(output_padding=(0, 1)), "output padding 0x1 must be below the stride 1x1"),
    (lambda: _deconv((4, 2, 3, 13)), "kernel must be in [1, 11], got 3x13"),
    (lambda: _deconv(bias=np.ones(3, np.float32)), "bias must have one value per output channel (2)"),
    (lambda: _deconv(padding=3).out_size(2, 2), "a 2x2 input gives a -2x-2 output"),
])
def test_conv_transpose_refusals(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value)


def test_conv_transpose_run_refusals():
    conv = _deconv(stride=2, padding=1, output_padding=1)
    with pytest.raises(ValueError, match="output is 8x8 but a 5x5 input gives 10x10"):
        conv.run(channels(np.ones((4, 5, 5))), _core.Feature(2, 8, 8).view())
    with pytest.raises(ValueError, match="input has 3 channels, the layer takes 4"):
        conv.run(channels(np.ones((3, 5, 5))), _core.Feature(2, 10, 10).view())


# ------------------------------------------------------- the graph op class


class Runtime:
    """The run context the executor passes to ops, reduced to what they use."""

    mode, isa = "dense", None

    def __init__(self):
        self.macs = {}

    def new(self, channels_, height, width, written=0):
        return _core.Feature(channels_, height, width, written).view()

    def count(self, name, macs):
        self.macs[name] = self.macs.get(name, 0) + macs


def make_op(attrs, weight, bias=None, isa=None):
    tensors = {"w": weight.astype(np.float32)}
    params = {"weight": "w"}
    if bias is not None:
        tensors["b"] = bias.astype(np.float32)
        params["bias"] = "b"
    node = Node("conv_transpose2d", "up", ["x"], ["y"], attrs, params)
    return OPS["conv_transpose2d"](node, BuildContext(tensors, {}, isa))


@pytest.mark.parametrize("isa", LEVELS)
def test_conv_transpose_op_runs_fsrcnn_tail(isa):
    check_isa(isa)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((56, 11, 14))
    weight, bias = rng.standard_normal((56, 1, 9, 9)), rng.standard_normal(1)
    attrs = {"kernel": 9, "stride": 2, "padding": 4, "output_padding": 1}
    op = make_op(attrs, weight, bias, isa)
    assert op.infer([(56, 11, 14)]) == [(1, 22, 28)]
    rt = Runtime()
    (out,) = op.run(rt, [channels(x)])
    assert_close(out.numpy(), torch_deconv(x, weight, bias, 2, 4, 1, 1), f"op {isa}")
    assert rt.macs == {"up": 11 * 14 * 56 * 81} == {"up": op.macs([(56, 11, 14)])}


def test_conv_transpose_op_groups_and_defaults():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 5, 7))
    weight = rng.standard_normal((6, 2, 3, 3))
    op = make_op({"stride": [2, 1], "padding": [1, 0], "output_padding": [1, 0], "groups": 3},
                 weight)
    assert op.infer([(6, 5, 7)]) == [(6, 10, 9)]
    (out,) = op.run(Runtime(), [channels(x)])
    assert_close(out.numpy(), torch_deconv(x, weight, None, (2, 1), (1, 0), (1, 0), 3), "groups")


@pytest.mark.parametrize("attrs, weight_shape, message", [
    ({"stride": 2, "output_padding": 2}, (4, 2, 3, 3),
     "attribute 'output_padding' [2, 2] must be below the stride [2, 2]"),
    ({"kernel": 5}, (4, 2, 3, 3), "attribute 'kernel' [5, 5] does not match the 3x3 weight"),
    ({"groups": 3}, (4, 2, 3, 3), "weight has 4 input channels, which 3 groups do not divide"),
    ({"stride": 5}, (4, 2, 3, 3), "attribute 'stride' must be in [1, 4], got [5, 5]"),
    ({"dilation": 2}, (4, 2, 3, 3), "a dilated transposed convolution is not supported"),
    ({}, (4, 2, 3), "weight must be (cin, cout / groups, kh, kw), got shape (4, 2, 3)"),
])
def test_conv_transpose_op_refuses_attrs(attrs, weight_shape, message):
    with pytest.raises(CheckpointError) as info:
        make_op(attrs, np.ones(weight_shape))
    assert message in str(info.value) and "'up'" in str(info.value)


def test_conv_transpose_op_refuses_bias_and_sizes():
    with pytest.raises(CheckpointError, match=r"bias tensor 'b' has shape \(3,\), expected \(2,\)"):
        make_op({}, np.ones((4, 2, 3, 3)), np.ones(3))
    op = make_op({"padding": 3}, np.ones((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="a 2x2 input gives a -2x-2 output"):
        op.infer([(4, 2, 2)])
    with pytest.raises(ValueError, match="input has 5 channels, the weight takes 4"):
        op.infer([(5, 9, 9)])
