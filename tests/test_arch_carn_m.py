"""CARN-M (one file, x2/x3/x4 branches, group convs): detection, scales,
refusal of mangled weights, the converted graph against the PyTorch reference."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.carn_m import CARNM  # noqa: E402

from sparsr.errors import CheckpointError  # noqa: E402
from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import carn_m  # noqa: E402

MODEL = "models/carn_m.pth"


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return pth.read_state_dict(shared_dir / MODEL)


@pytest.fixture(scope="module")
def reference(state_dict):
    return checks.load_strictly(CARNM(feat=64, group=4), state_dict)


def test_reference_loads_the_real_weights_strictly(reference):
    assert isinstance(reference, CARNM)


def test_detects_the_hyper_parameters(state_dict):
    arch, hyper = pth.detect(state_dict)
    assert arch is carn_m
    assert hyper == {"num_feat": 64, "group": 4, "multi_scale": True, "scales": [2, 3, 4],
                     "scale": None}


def test_scale_must_be_one_of_the_branches(shared_dir, state_dict):
    arch, hyper = pth.detect(state_dict)
    with pytest.raises(CheckpointError, match=r"carn_m weights can run at x2, x3, x4"):
        pth.choose_scale(arch, hyper, None, shared_dir / MODEL)
    with pytest.raises(CheckpointError, match=r"no x8 \(they have x2, x3, x4\)"):
        pth.choose_scale(arch, hyper, 8, shared_dir / MODEL)


def test_mangled_weights_are_refused_naming_the_key(state_dict):
    checks.refuses_missing(state_dict, "b2.b1.body.2.weight")
    checks.refuses_missing(state_dict, "upsample.up4.body.3.bias")
    checks.refuses_missing(state_dict, "add_mean.shifter.bias")
    checks.refuses_reshaped(state_dict, "b3.c2.body.0.weight", (64, 128, 1, 1))
    checks.refuses_reshaped(state_dict, "upsample.up3.body.0.weight", (256, 16, 3, 3))
    checks.refuses_unexpected(state_dict, "b1.b1.body.6.weight")


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_graph_is_the_network(state_dict, reference, scale):
    model = checks.assert_graph_is_the_network(
        state_dict, scale, reference, torch.rand(1, 3, 8, 11), scale)
    assert model["io"] == {"scale": scale, "color": "rgb", "range": 1.0,
                           "channel_order": "rgb"}
    # Only the chosen upsampler branch is kept; the shared residual blocks once.
    branch = [k for k in model_tensors(state_dict, scale) if k.startswith("upsample.")]
    assert all(k.startswith(f"upsample.up{scale}.") for k in branch)


def model_tensors(sd, scale):
    arch, hyper = pth.detect(sd)
    return arch.build(sd, hyper, scale)[1]


def test_group_count_is_read_from_the_shapes():
    net = CARNM(feat=16, group=2)
    sd = checks.random_state(net)
    arch, hyper = pth.detect(sd)
    assert (hyper["num_feat"], hyper["group"]) == (16, 2)
    checks.assert_graph_is_the_network(sd, 3, net, torch.rand(1, 3, 5, 6), 3)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sparsr_matches_torch_on_a_set14_crop(shared_dir, state_dict, reference, tmp_path,
                                              scale):
    img = checks.crop(checks.set14_lr(shared_dir, "zebra", 4 if scale == 4 else 2), 20, 30)
    checks.assert_sparsr_matches(state_dict, tmp_path, scale, reference, img, scale)
