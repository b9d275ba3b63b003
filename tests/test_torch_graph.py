"""tools/torch_graph.py: any sparsr graph as a PyTorch module computes what the
engine computes (tiny CARN-M-like, RFDN-like and SMSR graphs from random
weights, dense and masked), trains its conv weights only, and writes them back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the graph module needs torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from archs import tiny  # noqa: E402
from archs.common import one_thread  # noqa: E402
from torch_graph import GraphModule  # noqa: E402

import sparsr  # noqa: E402

TOL = 1e-3   # on 0..255 outputs of order 100-300, float32


@pytest.fixture(scope="module", params=tiny.TINY)
def tiny_model(request, tmp_path_factory):
    path = tiny.save(request.param, tmp_path_factory.mktemp("tiny") / f"{request.param}.pt")
    return request.param, path


@pytest.mark.parametrize("mode", ["mask", "dense"])
def test_module_matches_the_engine(tiny_model, mode):
    name, path = tiny_model
    model = sparsr.load(path)
    net = GraphModule.from_model(model)
    for seed, (h, w) in enumerate([(24, 28), (27, 31)]):
        img = tiny.image(seed, h, w)
        fwd = model.forward(img, mode)
        with torch.no_grad(), one_thread():
            got = net.upscale_batch(tiny.to_tensor(img), masks=mode == "mask")
        got = got[0].permute(1, 2, 0).numpy()
        assert got.shape == fwd.output.shape
        assert np.abs(got - fwd.output).max() <= TOL * max(1.0, np.abs(fwd.output).max() / 100)
        if name == "smsr" and mode == "mask":
            # Part of the pixels important, part not: both branches are exercised.
            assert all(0.05 < m.mean() < 0.95 for m in fwd.masks), [m.mean() for m in fwd.masks]
            with torch.no_grad(), one_thread():
                given = net.upscale_batch(tiny.to_tensor(img), spatial_masks=fwd.masks)
            np.testing.assert_allclose(given[0].permute(1, 2, 0).numpy(), got, atol=1e-3)


def test_parameters_are_the_graph_tensors_by_name(tiny_model):
    name, path = tiny_model
    model = sparsr.load(path)
    net = GraphModule.from_model(model)
    params = dict(net.named_parameters())
    for conv in model.conv_names():
        key = conv + ".weight"
        assert net.param_path(key) == key and key in params
        np.testing.assert_array_equal(params[key].detach().numpy(), model.conv_weight(conv))
    assert set(net.conv_names()) == set(model.conv_names())
    # SMSR channel masks and constants are fixed buffers, not parameters.
    buffers = dict(net.named_buffers())
    if name == "smsr":
        assert "body.0.body.ch_mask" in buffers and "body.0.body.ch_mask" not in params


def test_gradients_reach_the_convs_and_trained_weights_go_back(tiny_model):
    name, path = tiny_model
    model = sparsr.load(path)
    net = GraphModule.from_model(model)
    img = tiny.image(3)
    x = tiny.to_tensor(img)
    with one_thread():
        loss = net.upscale_batch(x).square().mean()
        loss.backward()
        grads = {n: p.grad for n, p in net.named_parameters()}
        core = [c for c in model.conv_names() if c.endswith(("body.body.1", "c2_r", "b1.body.2"))]
        assert core, model.conv_names()
        for c in core:
            g = grads[c + ".weight"]
            assert g is not None and float(g.abs().sum()) > 0, c
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.97)
        net.write_back(model)
        with torch.no_grad():
            want = net.upscale_batch(x)[0].permute(1, 2, 0).numpy()
    got = model.forward(img).output
    assert np.abs(got - want).max() <= TOL * max(1.0, np.abs(want).max() / 100)
    base = sparsr.load(path).forward(img).output
    assert np.abs(base - got).max() > 0.1   # the engine runs the new weights


def test_functional_call_substitutes_a_weight_by_its_name(tiny_model):
    _, path = tiny_model
    model = sparsr.load(path)
    net = GraphModule.from_model(model)
    conv = model.conv_names()[len(model.conv_names()) // 2]
    key = conv + ".weight"
    x = tiny.to_tensor(tiny.image(4))
    zero = torch.zeros_like(net.tensor(key))
    with torch.no_grad(), one_thread():
        plain = net(x, image=True)
        subbed = torch.func.functional_call(net, {key: zero}, (x,), {"image": True})
        model.replace_weights({key: np.zeros_like(model.conv_weight(conv))})
    want = model.forward(tiny.image(4)).output
    assert not torch.equal(plain, subbed)
    assert np.abs(subbed[0].permute(1, 2, 0).numpy() - want).max() <= 0.05


def test_replace_weights_refuses_unknown_names_and_shapes(tiny_model):
    _, path = tiny_model
    model = sparsr.load(path)
    conv = model.conv_names()[1]
    with pytest.raises(KeyError, match="no tensor named 'nope.weight'"):
        model.replace_weights({"nope.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        model.replace_weights({conv + ".weight": np.zeros(3)})
    with pytest.raises(sparsr.CheckpointError, match="format"):
        model.replace_weights({}, formats={conv: "zip"})
