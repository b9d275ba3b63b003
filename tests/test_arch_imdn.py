"""IMDN from the authors' x2 and x4 checkpoints (saved from nn.DataParallel):
the PyTorch reference reproduces their Set5 PSNR, detection reads the
hyper-parameters and refuses a mangled state_dict, and the imported graph
computes the reference."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.common import MANGLINGS, mean_psnr, read_state_dict  # noqa: E402
from archs.imdn import IMDN  # noqa: E402
from conftest import dataset_pairs  # noqa: E402

from sparsr.importers.archs import imdn  # noqa: E402

DATA_RANGE = 1.0
# scale -> (checkpoint, Set5 PSNR of the authors' code on <shared>/data (shared README))
CHECKPOINTS = {2: ("models/imdn_x2.pth", 37.996), 4: ("models/imdn_x4.pth", 32.210)}
SCALES = sorted(CHECKPOINTS)


def hyper(scale: int) -> dict:
    return {"nf": 64, "blocks": 6, "distilled": 16, "cca_channels": 4, "scale": scale}


@pytest.fixture(scope="module", params=SCALES, ids=[f"x{s}" for s in SCALES])
def scale(request):
    return request.param


@pytest.fixture(scope="module")
def state_dict(shared_dir, scale):
    return read_state_dict(shared_dir / CHECKPOINTS[scale][0])


@pytest.fixture(scope="module")
def reference(state_dict, scale):
    net = IMDN(**hyper(scale)).eval()
    net.load_state_dict(state_dict, strict=True)
    return net


def test_the_checkpoints_are_saved_from_data_parallel(shared_dir, scale):
    raw = torch.load(shared_dir / CHECKPOINTS[scale][0], map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw)


def test_reference_reproduces_the_authors_set5_psnr(shared_dir, reference, scale):
    psnr = mean_psnr(reference, dataset_pairs(shared_dir, "Set5", scale), scale, DATA_RANGE)
    assert psnr == pytest.approx(CHECKPOINTS[scale][1], abs=0.01)


def test_detect_reads_the_hyper_parameters(state_dict, scale):
    checks.check_detection(imdn, state_dict, hyper(scale))


@pytest.mark.parametrize("how", MANGLINGS)
@pytest.mark.parametrize("key", ["IMDB4.c3.weight", "IMDB2.cca.conv_du.2.bias", "c.0.weight"])
def test_a_mangled_state_dict_is_refused_naming_the_key(state_dict, scale, key, how):
    checks.check_refusal(imdn, state_dict, hyper(scale), key, how)


def test_graph_is_valid_and_uses_every_weight(state_dict, scale):
    checks.check_graph(imdn, state_dict, hyper(scale), DATA_RANGE)


def test_graph_computes_the_reference(shared_dir, state_dict, reference, scale):
    diff = checks.graph_vs_reference(imdn, reference, state_dict, hyper(scale), shared_dir,
                                     DATA_RANGE)
    assert diff < 1e-3


def test_sparsr_computes_the_reference(shared_dir, state_dict, reference, scale, tmp_path):
    diff = checks.sparsr_vs_reference(imdn, reference, state_dict, hyper(scale), shared_dir,
                                      DATA_RANGE, tmp_path)
    assert diff <= 0.01
