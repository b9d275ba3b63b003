"""EDSR (EDSR-PyTorch key layout, random weights): detection of blocks,
features, scale, pixel range and mean shift; refusal of mangled weights; the
converted graph against the PyTorch reference."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.edsr import EDSR  # noqa: E402

from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import edsr  # noqa: E402


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_detects_the_hyper_parameters(scale):
    net = EDSR(n_resblocks=3, n_feats=16, scale=scale)
    arch, hyper = pth.detect(checks.random_state(net))
    assert arch is edsr
    assert hyper == {"n_colors": 3, "n_feats": 16, "n_resblocks": 3, "kernel_size": 3,
                     "scale": scale, "res_scale": 1.0, "mean_shift": "stored",
                     "rgb_range": 255.0}
    assert edsr.scales(hyper) == [scale]


def test_pixel_range_is_read_off_the_mean_shift():
    sd = checks.random_state(EDSR(n_resblocks=1, n_feats=8, rgb_range=1))
    assert pth.detect(sd)[1]["rgb_range"] == 1.0


def test_large_model_gets_the_papers_residual_scaling():
    # EDSR's 32 x 256 model was trained with res_scale 0.1, which no weight records.
    sd = {k: v.numpy() for k, v in EDSR(n_resblocks=32, n_feats=256, scale=2).state_dict().items()}
    assert pth.detect(sd)[1]["res_scale"] == 0.1


def test_mangled_weights_are_refused_naming_the_key():
    sd = checks.random_state(EDSR(n_resblocks=3, n_feats=16, scale=4))
    checks.refuses_missing(sd, "body.1.body.2.bias")
    checks.refuses_missing(sd, "body.3.weight")
    checks.refuses_missing(sd, "tail.0.2.weight")
    checks.refuses_reshaped(sd, "body.2.body.0.weight", (16, 16, 1, 1))
    checks.refuses_reshaped(sd, "tail.1.weight", (1, 16, 3, 3))
    checks.refuses_unexpected(sd, "head.1.weight")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_graph_is_the_network(scale):
    net = EDSR(n_resblocks=2, n_feats=16, scale=scale)
    model = checks.assert_graph_is_the_network(checks.random_state(net), scale, net,
                                               torch.rand(1, 3, 7, 9) * 255)
    assert model["io"] == {"scale": scale, "color": "rgb", "range": 255.0,
                           "channel_order": "rgb"}


def test_graph_with_residual_scaling_and_without_stored_mean_shift():
    net = EDSR(n_resblocks=2, n_feats=8, scale=2, res_scale=0.1)
    sd = checks.random_state(net)
    arch, hyper = pth.detect(sd)
    model, tensors = arch.build(sd, dict(hyper, res_scale=0.1), 2)
    x = torch.rand(1, 3, 6, 5) * 255
    with torch.no_grad():
        want = net.double()(x.double())
    assert float((checks.graph_torch.run(model, tensors, x) - want).abs().max()) < 1e-9
    # Without sub_mean/add_mean (an export that dropped frozen layers): the
    # constructor's DIV2K means at rgb_range 255.
    stripped = {k: v for k, v in sd.items() if not k.startswith(("sub_mean", "add_mean"))}
    arch, hyper = pth.detect(stripped)
    assert (hyper["mean_shift"], hyper["rgb_range"]) == ("div2k", 255.0)
    model, tensors = arch.build(stripped, dict(hyper, res_scale=0.1), 2)
    assert float((checks.graph_torch.run(model, tensors, x) - want).abs().max()) < 1e-4


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sparsr_matches_torch_on_a_set14_crop(shared_dir, tmp_path, scale):
    net = EDSR(n_resblocks=4, n_feats=32, scale=scale)
    img = checks.crop(checks.set14_lr(shared_dir, "monarch", 2), 40, 60)
    checks.assert_sparsr_matches(checks.random_state(net), tmp_path, scale, net, img,
                                 rgb_range=255.0)
