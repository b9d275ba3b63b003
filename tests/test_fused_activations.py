"""Leaky ReLU and PReLU fused into the conv epilogue by the executor: each
tiny graph against the same graph in float64 numpy, unfused, and the plan
checked to have folded the activation (and a residual add) into its conv.
Tolerance: max |error| <= 1e-3 * max(1, max |reference|)."""

from __future__ import annotations

import numpy as np
import pytest

import sparsr
from sparsr import checkpoint
from sparsr.graph import IO
from sparsr.importers.builder import GraphBuilder


def conv_ref(x, w, b, pad, groups=1):
    """float64 zero-padded convolution, stride 1: x (C, H, W), w (O, C / groups, k, k)."""
    k = w.shape[2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = xp.shape[1] - k + 1, xp.shape[2] - k + 1
    og, ig = w.shape[0] // groups, w.shape[1]
    out = np.zeros((w.shape[0], oh, ow))
    for g in range(groups):
        wg = w[g * og:(g + 1) * og].astype(np.float64)
        xg = xp[g * ig:(g + 1) * ig]
        for dy in range(k):
            for dx in range(k):
                out[g * og:(g + 1) * og] += np.einsum("oc,chw->ohw", wg[:, :, dy, dx],
                                                      xg[:, dy:dy + oh, dx:dx + ow])
    return out + b[:, None, None]


def negative(x, slopes):
    """r >= 0 ? r : slope * r, one slope per channel (or one for all)."""
    s = np.broadcast_to(np.asarray(slopes, np.float64), (x.shape[0],))[:, None, None]
    return np.where(x >= 0, x, s * x)


def _conv_params(rng, cout, cin_g, k):
    return {"weight": (rng.standard_normal((cout, cin_g, k, k)) * 0.2).astype(np.float32),
            "bias": (rng.standard_normal(cout) * 0.1).astype(np.float32)}


def _state(rng, convs: dict, prelus: dict) -> dict:
    sd = {}
    for name, shape in convs.items():
        sd.update({f"{name}.{role}": v for role, v in _conv_params(rng, *shape).items()})
    for name, n in prelus.items():
        sd[f"{name}.weight"] = rng.uniform(-0.4, 0.6, n).astype(np.float32)
    return sd


def _load(tmp_path, built, formats=None):
    model, tensors = built
    for layer, fmt in (formats or {}).items():
        model["layers"][layer] = fmt
    path = tmp_path / "g.pt"
    checkpoint.save(path, model, tensors)
    return sparsr.load(path)


def _run(model, img):
    """The graph output as (C, H, W) on 0..255 (the network's range here)."""
    return model.forward(img).output.transpose(2, 0, 1)


def _close(got, want):
    err = np.abs(got - want).max()
    assert err <= 1e-3 * max(1.0, np.abs(want).max()), f"max error {err:.3g}"


def _steps(model, h, w):
    return model._executor.plan(h, w).steps


@pytest.fixture
def rng():
    return np.random.default_rng(11)


@pytest.fixture
def img(rng):
    return rng.integers(0, 256, (13, 29, 3), dtype=np.uint8)


def _x(img):
    return img.transpose(2, 0, 1).astype(np.float64)


FORMATS = {"dense": {"format": "dense"}, "csr": {"format": "csr"},
           "nm": {"format": "nm", "options": {"n": 2, "m": 4}}}


def _nm_prune(w):
    """2:4 along input channels: channels 2, 3 of every group of 4 zero."""
    w = w.copy()
    w[:, np.arange(w.shape[1]) % 4 >= 2] = 0
    return w


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_leaky_relu_fuses(tmp_path, rng, img, fmt):
    sd = _state(rng, {"a": (8, 3, 3), "b": (3, 8, 1)}, {})
    if fmt == "nm":
        sd["b.weight"] = _nm_prune(sd["b.weight"])
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    y = b.leaky_relu(b.conv(b.input, "a"), 0.2)
    y = b.leaky_relu(b.conv(y, "b"), 0.05)
    m = _load(tmp_path, b.finish(y), {"b": FORMATS[fmt]})
    steps = _steps(m, *img.shape[:2])
    assert [s.op.node.op for s in steps] == ["conv2d", "conv2d"]
    np.testing.assert_array_equal(steps[0].act, np.full(8, 0.2, np.float32))
    np.testing.assert_array_equal(steps[1].act, np.full(3, 0.05, np.float32))
    h = negative(conv_ref(_x(img), sd["a.weight"], sd["a.bias"], 1), 0.2)
    want = negative(conv_ref(h, sd["b.weight"], sd["b.bias"], 0), 0.05)
    _close(_run(m, img), want)


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_prelu_fuses_per_channel_and_shared(tmp_path, rng, img, fmt):
    """A PReLU of one slope per channel, and of one slope for all channels."""
    sd = _state(rng, {"a": (12, 3, 3), "b": (3, 12, 3)}, {"pa": 12, "pb": 1})
    if fmt == "nm":
        sd["b.weight"] = _nm_prune(sd["b.weight"])
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    y = b.prelu(b.conv(b.input, "a"), "pa")
    y = b.prelu(b.conv(y, "b"), "pb")
    m = _load(tmp_path, b.finish(y), {"b": FORMATS[fmt]})
    steps = _steps(m, *img.shape[:2])
    assert [s.op.node.op for s in steps] == ["conv2d", "conv2d"]
    np.testing.assert_array_equal(steps[0].act, sd["pa.weight"])
    np.testing.assert_array_equal(steps[1].act, np.repeat(sd["pb.weight"], 3))
    h = negative(conv_ref(_x(img), sd["a.weight"], sd["a.bias"], 1), sd["pa.weight"])
    want = negative(conv_ref(h, sd["b.weight"], sd["b.bias"], 1), sd["pb.weight"])
    _close(_run(m, img), want)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_conv_prelu_slices_the_slopes_per_group(tmp_path, rng, img, groups):
    """Each group's packed conv gets its own output channels' slopes."""
    sd = _state(rng, {"a": (8, 3, 3), "g": (8, 8 // groups, 3), "c": (3, 8, 1)}, {"p": 8})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    y = b.conv(b.input, "a")
    y = b.prelu(b.conv(y, "g", groups=groups), "p")
    m = _load(tmp_path, b.finish(b.conv(y, "c")))
    steps = _steps(m, *img.shape[:2])
    assert [s.op.node.op for s in steps] == ["conv2d"] * 3
    assert steps[1].act is not None and len(steps[1].op.parts) == groups
    h = conv_ref(_x(img), sd["a.weight"], sd["a.bias"], 1)
    h = negative(conv_ref(h, sd["g.weight"], sd["g.bias"], 1, groups), sd["p.weight"])
    _close(_run(m, img), conv_ref(h, sd["c.weight"], sd["c.bias"], 0))


@pytest.mark.parametrize("fmt", FORMATS)
def test_conv_prelu_add_fuses_activation_then_residual(tmp_path, rng, img, fmt):
    """conv -> prelu -> add: one step, the slopes applied before the add."""
    sd = _state(rng, {"a": (8, 3, 3), "b": (8, 8, 3), "c": (3, 8, 3)}, {"p": 8})
    if fmt == "nm":
        sd["b.weight"] = _nm_prune(sd["b.weight"])
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    t = b.conv(b.input, "a")
    y = b.add(b.prelu(b.conv(t, "b"), "p"), t)
    m = _load(tmp_path, b.finish(b.conv(y, "c")), {"b": FORMATS[fmt]})
    steps = _steps(m, *img.shape[:2])
    assert [s.op.node.op for s in steps] == ["conv2d"] * 3
    assert steps[1].act is not None and steps[1].residual == steps[0].outputs[0]
    t_ref = conv_ref(_x(img), sd["a.weight"], sd["a.bias"], 1)
    y_ref = negative(conv_ref(t_ref, sd["b.weight"], sd["b.bias"], 1), sd["p.weight"]) + t_ref
    _close(_run(m, img), conv_ref(y_ref, sd["c.weight"], sd["c.bias"], 1))


def test_general_conv_fuses_leaky_relu_and_prelu(tmp_path, rng, img):
    """Convs the packed kernels do not take (5x5; stride 2) fuse through the
    general convolution's epilogue."""
    sd = _state(rng, {"a": (6, 3, 5), "s": (3, 6, 3)}, {"p": 3})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    y = b.leaky_relu(b.conv(b.input, "a"), 0.1)
    y = b.prelu(b.conv(y, "s", stride=2), "p")
    # Back to the input's size: a graph's output must be io.scale times its input.
    m = _load(tmp_path, b.finish(b.resize(y, "nearest", scale=2)))
    steps = _steps(m, *img.shape[:2])
    assert [s.op.node.op for s in steps] == ["conv2d", "conv2d", "resize"]
    assert steps[0].op.general is not None and steps[1].op.general is not None
    h = negative(conv_ref(_x(img), sd["a.weight"], sd["a.bias"], 2), 0.1)
    want = negative(conv_ref(h, sd["s.weight"], sd["s.bias"], 1)[:, ::2, ::2], sd["p.weight"])
    _close(_run(m, img), want.repeat(2, axis=1).repeat(2, axis=2))


def test_partial_convs_over_a_concat_apply_the_slopes_to_the_sum(tmp_path, rng, img):
    """A 1x1 conv over a concat of 4 parts runs as partial convs; its leaky
    ReLU is applied once, to the whole sum, after the last part."""
    parts = 4
    convs = {f"p{i}": (3, 3, 3) for i in range(parts)}
    convs["collect"] = (3, 3 * parts, 1)
    sd = _state(rng, convs, {})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    fea, outs = b.input, []
    for i in range(parts):
        fea = b.conv(fea, f"p{i}")
        outs.append(fea)
    m = _load(tmp_path, b.finish(b.leaky_relu(b.conv(b.concat(outs), "collect"), 0.3)))
    steps = _steps(m, *img.shape[:2])
    assert [type(s.op).__name__ for s in steps].count("PartialConv") == parts
    assert "leaky_relu" not in [s.op.node.op for s in steps]
    fea, refs = _x(img), []
    for i in range(parts):
        fea = conv_ref(fea, sd[f"p{i}.weight"], sd[f"p{i}.bias"], 1)
        refs.append(fea)
    want = negative(conv_ref(np.concatenate(refs), sd["collect.weight"], sd["collect.bias"], 0),
                    0.3)
    _close(_run(m, img), want)


def test_activation_of_a_value_read_twice_is_not_fused(tmp_path, rng, img):
    """The conv output also feeds an add: the PReLU runs on its own and the
    add still sees the conv output without it."""
    sd = _state(rng, {"a": (3, 3, 3)}, {"p": 3})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    t = b.conv(b.input, "a")
    m = _load(tmp_path, b.finish(b.add(b.prelu(t, "p"), t)))
    steps = _steps(m, *img.shape[:2])
    assert [s.op.node.op for s in steps] == ["conv2d", "prelu", "add"]
    assert steps[0].act is None
    t_ref = conv_ref(_x(img), sd["a.weight"], sd["a.bias"], 1)
    _close(_run(m, img), negative(t_ref, sd["p.weight"]) + t_ref)


def test_prelu_of_the_wrong_channel_count_is_refused(tmp_path, rng):
    """A conv's PReLU of neither one slope nor one per channel is refused at load."""
    sd = _state(rng, {"a": (4, 3, 3)}, {"p": 5})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    built = b.finish(b.prelu(b.conv(b.input, "a"), "p"))
    with pytest.raises(sparsr.CheckpointError, match="5 slopes for 4 channels"):
        _load(tmp_path, built)
