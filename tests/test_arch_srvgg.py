"""SRVGGNetCompact (Real-ESRGAN realesr-animevideov3): detection, refusal of
mangled weights, and the converted graph against the PyTorch reference."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.srvgg import SRVGGNetCompact  # noqa: E402

from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import srvgg  # noqa: E402

MODEL = "models/realesr_animevideov3_x4.pth"


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return pth.read_state_dict(shared_dir / MODEL)


@pytest.fixture(scope="module")
def reference(state_dict):
    return checks.load_strictly(SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4),
                                state_dict)


def test_reference_loads_the_real_weights_strictly(reference):
    assert isinstance(reference, SRVGGNetCompact)


def test_detects_the_hyper_parameters(state_dict):
    arch, hyper = pth.detect(state_dict)
    assert arch is srvgg
    assert hyper == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 16,
                     "scale": 4}
    assert srvgg.scales(hyper) == [4]


def test_mangled_weights_are_refused_naming_the_key(state_dict):
    checks.refuses_missing(state_dict, "body.4.bias")
    checks.refuses_missing(state_dict, "body.7.weight")
    checks.refuses_reshaped(state_dict, "body.6.weight", (64, 32, 3, 3))
    checks.refuses_reshaped(state_dict, "body.3.weight", (1,))
    checks.refuses(dict(state_dict, **{"body.34.weight": state_dict["body.34.weight"][:40]}),
                   ["'body.34.weight'", "40 output channels", "pixel shuffle"])


def test_relu_variant_is_refused_as_ambiguous(state_dict):
    no_prelu = {k: v for k, v in state_dict.items() if v.ndim != 1 or k.endswith(".bias")}
    checks.refuses(no_prelu, ["PReLU", "ONNX"])


def test_graph_is_the_network(state_dict, reference):
    model = checks.assert_graph_is_the_network(state_dict, 4, reference,
                                               torch.rand(1, 3, 9, 14))
    assert model["io"] == {"scale": 4, "color": "rgb", "range": 1.0, "channel_order": "rgb"}
    assert model["architecture"] == "srvgg"


def test_other_configurations_with_random_weights():
    for num_feat, num_conv, upscale in [(8, 2, 2), (16, 0, 3), (4, 1, 1)]:
        net = SRVGGNetCompact(num_feat=num_feat, num_conv=num_conv, upscale=upscale)
        sd = checks.random_state(net)
        arch, hyper = pth.detect(sd)
        assert (arch, hyper["num_feat"], hyper["num_conv"], hyper["scale"]) == \
            (srvgg, num_feat, num_conv, upscale)
        checks.assert_graph_is_the_network(sd, upscale, net, torch.rand(1, 3, 7, 5))


def test_sparsr_matches_torch_on_a_set14_crop(shared_dir, state_dict, reference, tmp_path):
    img = checks.crop(checks.set14_lr(shared_dir, "baboon", 4), 30, 40)
    checks.assert_sparsr_matches(state_dict, tmp_path, 4, reference, img)
