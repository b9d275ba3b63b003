"""RCAN (EDSR-PyTorch key layout, random weights): detection of groups, blocks,
reduction and scale; refusal of mangled weights; the converted graph against the
PyTorch reference, small and at the paper's depth (10 groups x 20 blocks)."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.edsr import RCAN  # noqa: E402

from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import rcan  # noqa: E402


def test_detects_the_hyper_parameters():
    net = RCAN(n_resgroups=2, n_resblocks=3, n_feats=32, reduction=8, scale=3)
    arch, hyper = pth.detect(checks.random_state(net))
    assert arch is rcan
    assert hyper == {"n_colors": 3, "n_feats": 32, "n_resgroups": 2, "n_resblocks": 3,
                     "reduction": 8, "kernel_size": 3, "scale": 3, "mean_shift": "stored",
                     "rgb_range": 255.0}


def test_mangled_weights_are_refused_naming_the_key():
    sd = checks.random_state(RCAN(n_resgroups=2, n_resblocks=2, n_feats=16, reduction=4))
    checks.refuses_missing(sd, "body.1.body.0.body.3.conv_du.2.bias")
    checks.refuses_missing(sd, "body.0.body.2.weight")
    checks.refuses_missing(sd, "body.2.bias")
    checks.refuses_reshaped(sd, "body.1.body.1.body.3.conv_du.0.weight", (2, 16, 1, 1))
    checks.refuses_unexpected(sd, "body.0.body.1.body.4.weight")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_graph_is_the_network(scale):
    net = RCAN(n_resgroups=2, n_resblocks=2, n_feats=32, reduction=16, scale=scale)
    model = checks.assert_graph_is_the_network(checks.random_state(net), scale, net,
                                               torch.rand(1, 3, 6, 8) * 255)
    assert model["io"]["range"] == 255.0


@pytest.fixture(scope="module")
def deep():
    """The paper's depth: 10 groups x 20 blocks of 64 features."""
    net = RCAN(n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=2)
    return net, checks.random_state(net, gain=0.5)   # 200 residual blocks: outputs ~ 0..255


def test_deep_graph_is_the_network(deep):
    net, sd = deep
    arch, hyper = pth.detect(sd)
    assert (hyper["n_resgroups"], hyper["n_resblocks"]) == (10, 20)
    checks.assert_graph_is_the_network(sd, 2, net, torch.rand(1, 3, 5, 6) * 255)


@pytest.mark.parametrize("scale", [2, 4])
def test_sparsr_matches_torch_on_a_set14_crop(shared_dir, tmp_path, scale):
    net = RCAN(n_resgroups=2, n_resblocks=3, n_feats=32, reduction=16, scale=scale)
    img = checks.crop(checks.set14_lr(shared_dir, "pepper", 2), 40, 60)
    checks.assert_sparsr_matches(checks.random_state(net), tmp_path, scale, net, img,
                                 rgb_range=255.0)


def test_deep_sparsr_matches_torch(shared_dir, tmp_path, deep):
    net, sd = deep
    img = checks.crop(checks.set14_lr(shared_dir, "pepper", 2), 40, 60, 12, 16)
    checks.assert_sparsr_matches(sd, tmp_path, 2, net, img, rgb_range=255.0)
