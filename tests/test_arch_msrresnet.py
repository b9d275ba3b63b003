"""MSRResNet (BasicSR key layout, random weights): detection, refusal of
mangled weights, the converted graph (bilinear base added) against the
PyTorch reference."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.msrresnet import MSRResNet  # noqa: E402

from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import msrresnet  # noqa: E402


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_detects_the_hyper_parameters(scale):
    net = MSRResNet(num_feat=16, num_block=3, upscale=scale)
    arch, hyper = pth.detect(checks.random_state(net))
    assert arch is msrresnet
    assert hyper == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 16, "num_block": 3,
                     "scale": scale}


def test_mangled_weights_are_refused_naming_the_key():
    sd = checks.random_state(MSRResNet(num_feat=16, num_block=3, upscale=4))
    checks.refuses_missing(sd, "body.1.conv2.bias")
    checks.refuses_missing(sd, "upconv2.bias")
    checks.refuses_reshaped(sd, "conv_hr.weight", (16, 16, 1, 1))
    checks.refuses_unexpected(sd, "body.0.conv3.weight")
    # A gap in the blocks names the first missing one.
    gap = {k: v for k, v in sd.items() if not k.startswith("body.1.")}
    checks.refuses(gap, ["'body.1.conv1.weight'"])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_graph_is_the_network(scale):
    net = MSRResNet(num_feat=16, num_block=2, upscale=scale)
    model = checks.assert_graph_is_the_network(checks.random_state(net), scale, net,
                                               torch.rand(1, 3, 7, 6))
    assert model["io"]["range"] == 1.0


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sparsr_matches_torch_on_a_set14_crop(shared_dir, tmp_path, scale):
    net = MSRResNet(num_feat=32, num_block=4, upscale=scale)
    img = checks.crop(checks.set14_lr(shared_dir, "comic", 2), 30, 20)
    checks.assert_sparsr_matches(checks.random_state(net), tmp_path, scale, net, img)
