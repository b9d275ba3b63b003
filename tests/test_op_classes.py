"""The graph op classes of activation, arith, channels, spatial and reduce: made
from nodes, inferred and run through a stand-in run context (op_testing), at
every ISA level, against float64 PyTorch / numpy; their refusals name the node
and the problem. Tolerances as in test_ops_elementwise / test_ops_spatial:
exact for piecewise ops, arithmetic and value moves; 4e-6 relative for the
smooth activations; 2e-6 from torch float32 for resizing; 1e-6 for statistics."""

from __future__ import annotations

import numpy as np
import pytest

from op_testing import LEVELS, make_op, random, run_op
from sparsr.errors import CheckpointError

torch = pytest.importorskip("torch", reason="the references are PyTorch's")
F = torch.nn.functional


def t64(x):
    return torch.from_numpy(x.astype(np.float64))


SLOPES = np.array([0.1, -0.2, 0.3, 0.5, 2.0], np.float32)
# op, attrs, tensors (role -> array), reference on a float64 tensor, exact?
ACTIVATIONS = [
    ("relu", {}, {}, F.relu, True),
    ("leaky_relu", {}, {}, lambda t: F.leaky_relu(t, 0.01), False),
    ("leaky_relu", {"slope": 0.2}, {}, lambda t: F.leaky_relu(t, 0.2), False),
    ("prelu", {}, {"weight": SLOPES}, lambda t: F.prelu(t[None], t64(SLOPES))[0], False),
    ("prelu", {}, {"weight": SLOPES[:1]}, lambda t: F.prelu(t, t64(SLOPES[:1])), False),
    ("sigmoid", {}, {}, torch.sigmoid, False),
    ("silu", {}, {}, F.silu, False),
    ("gelu", {}, {}, F.gelu, False),
    ("gelu", {"approximate": "tanh"}, {}, lambda t: F.gelu(t, approximate="tanh"), False),
    ("tanh", {}, {}, torch.tanh, False),
    ("clamp", {"min": -0.5}, {}, lambda t: t.clamp(min=-0.5), True),
    ("clamp", {"max": 1}, {}, lambda t: t.clamp(max=1), True),
    ("clamp", {"min": -1.5, "max": 0.25}, {}, lambda t: t.clamp(-1.5, 0.25), True),
]


def with_tensors(op, attrs, tensors, **kw):
    params = {role: f"{op}.{role}" for role in tensors}
    named = {f"{op}.{role}": t for role, t in tensors.items()}
    return make_op(op, attrs=attrs, params=params, tensors=named, **kw)


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("case", ACTIVATIONS, ids=lambda c: f"{c[0]}{c[1] or ''}")
@pytest.mark.parametrize("inplace", [False, True])
def test_activations(case, isa, inplace):
    op_name, attrs, tensors, reference, exact = case
    x = random(np.random.default_rng(5), (5, 3, 17), scale=3.0)
    op = with_tensors(op_name, attrs, tensors)
    (got,), outs, inputs = run_op(op, [x], isa=isa, inplace=inplace)
    assert (outs[0] is inputs[0]) == inplace
    want = reference(t64(x)).numpy()
    if exact:
        np.testing.assert_array_equal(got, want.astype(np.float32))
    else:
        np.testing.assert_allclose(got, want, rtol=4e-6, atol=1e-12)


ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply}


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("op_name", list(ARITH))
def test_arith_two_inputs(op_name, isa):
    rng = np.random.default_rng(9)
    a, b = random(rng, (4, 3, 7)), random(rng, (4, 3, 7))
    per_channel, single = random(rng, (4, 1, 1)), random(rng, (1, 1, 1))
    op = make_op(op_name, n_inputs=2)
    for x, y in [(a, b), (a, per_channel), (a, single), (per_channel, b), (single, b)]:
        for inplace in (False, True):
            (got,), outs, inputs = run_op(op, [x, y], isa=isa, inplace=inplace)
            np.testing.assert_array_equal(got, ARITH[op_name](x, y))
            # In place, the output takes the full-sized input's buffer only.
            full = 0 if x.shape == got.shape else 1
            assert (outs[0] is inputs[full]) == inplace
            np.testing.assert_array_equal(inputs[1 - full].numpy(), [x, y][1 - full])


@pytest.mark.parametrize("isa", LEVELS)
@pytest.mark.parametrize("op_name", list(ARITH))
def test_arith_with_a_constant(op_name, isa):
    x = random(np.random.default_rng(10), (5, 2, 9))
    other = np.arange(1, 6, dtype=np.float32)
    cases = [({}, {"other": other}, other[:, None, None]),
             ({}, {"other": other[:1]}, other[0]),
             ({"value": 2.5}, {}, np.float32(2.5)),
             ({"value": -3}, {}, np.float32(-3))]
    for attrs, tensors, c in cases:
        (got,), _, _ = run_op(with_tensors(op_name, attrs, tensors), [x], isa=isa)
        np.testing.assert_array_equal(got, ARITH[op_name](x, c))
    if op_name == "sub":
        (got,), _, _ = run_op(make_op("sub", attrs={"value": 1.0, "reverse": True}), [x], isa=isa)
        np.testing.assert_array_equal(got, np.float32(1.0) - x)


def test_channel_ops_are_views():
    rng = np.random.default_rng(11)
    parts = [random(rng, (c, 3, 5)) for c in (2, 1, 4)]
    (cat,), outs, inputs = run_op(make_op("concat", n_inputs=3), parts)
    np.testing.assert_array_equal(cat, np.concatenate(parts))
    # A view: writing an input shows in the output.
    from sparsr import _core
    _core.binary_const("add", inputs[1], 10.0, inputs[1])
    np.testing.assert_array_equal(outs[0].numpy()[2], parts[1][0] + np.float32(10.0))

    x = random(rng, (7, 2, 3))
    got, _, _ = run_op(make_op("split", attrs={"sizes": [3, 1, 3]}, n_outputs=3), [x])
    for g, w in zip(got, np.split(x, [3, 4])):
        np.testing.assert_array_equal(g, w)
    for start, stop in [(0, 3), (2, None), (-3, -1), (5, 100), (-100, 2)]:
        (got,), _, _ = run_op(make_op("slice", attrs={"start": start, "stop": stop}), [x])
        np.testing.assert_array_equal(got, x[start:stop])


@pytest.mark.parametrize("factor", [2, 3])
def test_shuffle_ops(factor):
    x = random(np.random.default_rng(12), (2 * factor * factor, 3, 5))
    (y,), _, _ = run_op(make_op("pixel_shuffle", attrs={"factor": factor}), [x])
    np.testing.assert_array_equal(y, F.pixel_shuffle(torch.from_numpy(x)[None], factor)[0])
    (back,), _, _ = run_op(make_op("pixel_unshuffle", attrs={"factor": factor}), [y])
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("mode,align_corners", [("nearest", False), ("bilinear", False),
                                                ("bilinear", True), ("bicubic", False)])
def test_resize_op(mode, align_corners):
    x = random(np.random.default_rng(13), (3, 5, 7))
    t = torch.from_numpy(x)[None]
    ac = align_corners if mode != "nearest" else None
    for scale in (2.0, 1.5, 0.5):
        op = make_op("resize", attrs={"mode": mode, "align_corners": align_corners,
                                      "scale": scale})
        (got,), _, _ = run_op(op, [x])
        want = F.interpolate(t, scale_factor=scale, mode=mode, align_corners=ac)[0].numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    like = np.zeros((1, 11, 4), np.float32)
    op = make_op("resize", n_inputs=2, attrs={"mode": mode, "align_corners": align_corners})
    (got,), _, _ = run_op(op, [x, like])
    want = F.interpolate(t, size=(11, 4), mode=mode, align_corners=ac)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("isa", LEVELS)
def test_global_stats_ops(isa):
    x = random(np.random.default_rng(14), (6, 7, 33)) + np.float32(100)
    (mean,), _, _ = run_op(make_op("global_mean"), [x], isa=isa)
    (std,), _, _ = run_op(make_op("global_std"), [x], isa=isa)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(1, 2), keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(std, x64.std(axis=(1, 2), keepdims=True), rtol=1e-6)


# ---------------------------------------------------------------- refusals

BUILD_REFUSALS = [
    (dict(op="leaky_relu", attrs={"slope": "big"}), "attribute 'slope' must be float"),
    (dict(op="gelu", attrs={"approximate": "fast"}), "'approximate' must be one of"),
    (dict(op="clamp"), "needs a 'min' or a 'max'"),
    (dict(op="clamp", attrs={"min": float("nan")}), "'min' must be in"),
    (dict(op="prelu"), "lacks its 'weight' tensor"),
    (dict(op="relu", n_inputs=2), "takes 1 inputs, got 2"),
    (dict(op="add", n_inputs=2, attrs={"value": 1.0}), "not both"),
    (dict(op="mul"), "exactly one constant"),
    (dict(op="add", attrs={"value": 1.0, "reverse": True}), "'reverse' applies only to sub"),
    (dict(op="sub", n_inputs=3), "takes 1 to 2 inputs, got 3"),
    (dict(op="split", attrs={"sizes": [2, 0]}, n_outputs=2), "list of positive ints"),
    (dict(op="split", attrs={"sizes": [2, 2]}, n_outputs=3), "2 sizes for 3 outputs"),
    (dict(op="slice", attrs={"start": 1.5}), "'start' must be int"),
    (dict(op="pixel_shuffle"), "lacks its 'factor'"),
    (dict(op="pixel_unshuffle", attrs={"factor": 0}), "'factor' must be in"),
    (dict(op="resize", attrs={"mode": "area", "scale": 2.0}), "'mode' must be one of"),
    (dict(op="resize", attrs={"scale": 2.0, "align_corners": True}),
     "align_corners applies to bilinear and bicubic only"),
    (dict(op="resize", attrs={"mode": "bilinear"}), "needs a 'scale'"),
    (dict(op="resize", n_inputs=2, attrs={"scale": 2.0}), "not both"),
    (dict(op="resize", attrs={"scale": -2.0}), "'scale' must be in"),
]


@pytest.mark.parametrize("kw,message", BUILD_REFUSALS, ids=lambda v: str(v)[:40])
def test_build_refusals(kw, message):
    op = kw.pop("op")
    with pytest.raises(CheckpointError, match=message) as e:
        make_op(op, **kw)
    assert f"node 'test_{op}' ({op})" in str(e.value)


def test_tensor_refusals():
    with pytest.raises(CheckpointError, match=r"weight must be \(C,\) or \(1,\), got shape \(2, 2\)"):
        with_tensors("prelu", {}, {"weight": np.ones((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match=r"'other' must be \(C,\) or \(1,\)"):
        with_tensors("add", {}, {"other": np.ones((3, 1, 1), np.float32)})


INFER_REFUSALS = [
    (lambda: with_tensors("prelu", {}, {"weight": SLOPES}), [(4, 2, 2)],
     "5 slopes for 4 channels"),
    (lambda: with_tensors("mul", {}, {"other": SLOPES}), [(4, 2, 2)],
     "'other' has 5 values for 4 channels"),
    (lambda: make_op("add", n_inputs=2), [(4, 2, 2), (4, 2, 3)], "differ and neither"),
    (lambda: make_op("sub", n_inputs=2), [(4, 2, 2), (2, 1, 1)], "differ and neither"),
    (lambda: make_op("concat", n_inputs=2), [(4, 2, 2), (1, 3, 2)], "differ in height or width"),
    (lambda: make_op("split", attrs={"sizes": [2, 3]}, n_outputs=2), [(4, 2, 2)],
     "add up to 5, the input has 4 channels"),
    (lambda: make_op("slice", attrs={"start": 3, "stop": 3}), [(4, 2, 2)], "are empty"),
    (lambda: make_op("pixel_shuffle", attrs={"factor": 2}), [(6, 2, 2)],
     "6 channels do not divide by factor"),
    (lambda: make_op("pixel_unshuffle", attrs={"factor": 2}), [(1, 4, 5)],
     "factor 2 does not divide the size 4x5"),
    (lambda: make_op("resize", attrs={"scale": 0.1}), [(1, 4, 5)], "makes 4x5 empty"),
]


@pytest.mark.parametrize("make,shapes,message", INFER_REFUSALS, ids=lambda v: str(v)[:30])
def test_infer_refusals(make, shapes, message):
    with pytest.raises(ValueError, match=message):
        make().infer(shapes)
