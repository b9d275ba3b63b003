"""DnCNN (KAIR dncnn_25, grey, scale 1): detection, refusal of mangled or
ambiguous weights, the converted graph (input - predicted noise) against the
PyTorch reference."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.dncnn import DnCNN  # noqa: E402

from sparsr.importers import pth  # noqa: E402
from sparsr.importers.archs import dncnn  # noqa: E402

MODEL = "models/dncnn_25_gray.pth"


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return pth.read_state_dict(shared_dir / MODEL)


@pytest.fixture(scope="module")
def reference(state_dict):
    return checks.load_strictly(DnCNN(in_nc=1, out_nc=1, nc=64, nb=17), state_dict)


def test_reference_loads_the_real_weights_strictly(reference):
    assert isinstance(reference, DnCNN)


def test_detects_the_hyper_parameters(state_dict):
    arch, hyper = pth.detect(state_dict)
    assert arch is dncnn
    assert hyper == {"in_nc": 1, "out_nc": 1, "nc": 64, "nb": 17, "scale": 1}
    assert dncnn.scales(hyper) == [1]


def test_mangled_weights_are_refused_naming_the_key(state_dict):
    checks.refuses_missing(state_dict, "model.10.bias")
    checks.refuses_missing(state_dict, "model.32.weight")
    checks.refuses_reshaped(state_dict, "model.14.weight", (64, 64, 1, 1))
    checks.refuses_unexpected(state_dict, "model.9.weight")


def test_ambiguous_layouts_are_refused():
    # A noise-level map input (FDnCNN), and IRCNN's keys (a 7-conv DnCNN's).
    checks.refuses(checks.random_state(DnCNN(in_nc=2, out_nc=1, nc=8, nb=4)), ["FDnCNN"])
    checks.refuses(checks.random_state(DnCNN(nc=8, nb=7)), ["IRCNN", "ONNX"])


def test_graph_is_the_network(state_dict, reference):
    model = checks.assert_graph_is_the_network(state_dict, 1, reference,
                                               torch.rand(1, 1, 12, 9))
    assert model["io"] == {"scale": 1, "color": "grey", "range": 1.0, "channel_order": "rgb"}


def test_it_denoises(shared_dir, reference):
    # The reference removes most of sigma-25 noise from a real image: the residual
    # convention (input - noise) is right.
    clean = checks.crop(checks.set14_lr(shared_dir, "barbara", 2), 60, 80, 64, 64, grey=True)
    rng = np.random.default_rng(0)
    noisy = clean / 255.0 + rng.normal(0, 25 / 255.0, clean.shape)
    x = torch.from_numpy(noisy[None, None]).float()
    with torch.no_grad():
        out = reference(x)[0, 0].numpy()
    assert np.abs(out - clean / 255.0).std() < 0.5 * np.abs(noisy - clean / 255.0).std()


def test_rgb_variant_with_random_weights():
    net = DnCNN(in_nc=3, out_nc=3, nc=8, nb=5)
    sd = checks.random_state(net)
    model = checks.assert_graph_is_the_network(sd, 1, net, torch.rand(1, 3, 6, 7))
    assert model["io"]["color"] == "rgb"


def test_sparsr_matches_torch_on_a_noisy_set14_crop(shared_dir, state_dict, reference,
                                                     tmp_path):
    clean = checks.crop(checks.set14_lr(shared_dir, "barbara", 2), 60, 80, grey=True)
    noise = np.random.default_rng(1).normal(0, 25, clean.shape)
    noisy = np.clip(np.rint(clean + noise), 0, 255).astype(np.uint8)
    checks.assert_sparsr_matches(state_dict, tmp_path, 1, reference, noisy, color="grey")
