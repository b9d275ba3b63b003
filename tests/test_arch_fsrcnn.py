"""FSRCNN (yjn870, x2 on Y): detection, the scale that no weight records,
refusal of mangled weights, the converted graph against the PyTorch reference."""

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.fsrcnn import FSRCNN  # noqa: E402

from sparsr import checkpoint  # noqa: E402
from sparsr.errors import CheckpointError  # noqa: E402
from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import fsrcnn  # noqa: E402

MODEL = "models/fsrcnn_x2_y.pth"


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return pth.read_state_dict(shared_dir / MODEL)


@pytest.fixture(scope="module")
def reference(state_dict):
    return checks.load_strictly(FSRCNN(scale_factor=2), state_dict)


def test_reference_loads_the_real_weights_strictly(reference):
    assert isinstance(reference, FSRCNN)


def test_detects_the_hyper_parameters(state_dict):
    arch, hyper = pth.detect(state_dict)
    assert arch is fsrcnn
    assert hyper == {"num_channels": 1, "d": 56, "s": 12, "m": 4, "first_kernel": 5,
                     "last_kernel": 9, "scale": None}
    # The scale is the transposed conv's stride: not in the weights.
    assert fsrcnn.scales(hyper) == [2, 3, 4]


def test_scale_comes_from_the_caller_or_the_file_name(shared_dir, state_dict):
    arch, hyper = pth.detect(state_dict)
    assert pth.choose_scale(arch, hyper, None, shared_dir / MODEL) == 2
    assert pth.choose_scale(arch, hyper, 3, shared_dir / MODEL) == 3
    with pytest.raises(CheckpointError, match=r"x2, x3, x4: choose one"):
        pth.choose_scale(arch, hyper, None, "weights.pth")
    with pytest.raises(CheckpointError, match=r"no x5 \(they have x2, x3, x4\)"):
        pth.choose_scale(arch, hyper, 5, "weights.pth")


def test_mangled_weights_are_refused_naming_the_key(state_dict):
    checks.refuses_missing(state_dict, "mid_part.4.weight")
    checks.refuses_missing(state_dict, "first_part.1.weight")
    checks.refuses_reshaped(state_dict, "last_part.weight", (56, 2, 9, 9))
    checks.refuses_reshaped(state_dict, "mid_part.10.weight", (56, 12, 3, 3))
    checks.refuses_unexpected(state_dict, "first_part.2.weight")


def test_graph_is_the_network(state_dict, reference):
    model = checks.assert_graph_is_the_network(state_dict, 2, reference,
                                               torch.rand(1, 1, 11, 16))
    assert model["io"] == {"scale": 2, "color": "y", "range": 1.0, "channel_order": "rgb"}
    assert model["hyper"]["scale"] == 2


@pytest.mark.parametrize("scale", [3, 4])
def test_other_scales_and_sizes_with_random_weights(scale):
    net = FSRCNN(scale_factor=scale, d=16, s=6, m=2)
    sd = checks.random_state(net)
    arch, hyper = pth.detect(sd)
    assert (hyper["d"], hyper["s"], hyper["m"]) == (16, 6, 2)
    checks.assert_graph_is_the_network(sd, scale, net, torch.rand(1, 1, 5, 8))


def test_sparsr_matches_torch_on_a_set14_crop(shared_dir, state_dict, reference, tmp_path):
    img = checks.crop(checks.set14_lr(shared_dir, "lenna", 2), 50, 60)
    checks.assert_sparsr_matches(state_dict, tmp_path, 2, reference, img, color="y")


def test_convert_takes_the_scale_from_the_file_name(shared_dir, tmp_path):
    model = pth.convert(shared_dir / MODEL, tmp_path / "f.pt")
    assert model["io"]["scale"] == 2
    metadata = checkpoint.load(tmp_path / "f.pt")[2]
    assert metadata["scale_from"] == "file name" and metadata["scales_in_source"] == [2, 3, 4]
