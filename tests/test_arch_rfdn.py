"""RFDN from the authors' AIM 2020 checkpoint: the PyTorch reference reproduces
their Set5 PSNR, detection reads the hyper-parameters and refuses a mangled
state_dict, and the imported graph computes the reference."""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.common import MANGLINGS, mean_psnr, read_state_dict  # noqa: E402
from archs.rfdn import RFDN  # noqa: E402
from conftest import dataset_pairs  # noqa: E402

from sparsr.errors import CheckpointError  # noqa: E402
from sparsr.importers.archs import rfdn  # noqa: E402

CHECKPOINT = "models/rfdn_aim_x4.pth"
HYPER = {"nf": 50, "blocks": 4, "distilled": 25, "esa_channels": 12, "scale": 4}
DATA_RANGE = 255.0
SET5_PSNR = 32.159  # the authors' code on <shared>/data (shared README)


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return read_state_dict(shared_dir / CHECKPOINT)


@pytest.fixture(scope="module")
def reference(state_dict):
    net = RFDN(**HYPER).eval()
    net.load_state_dict(state_dict, strict=True)
    return net


def test_reference_reproduces_the_authors_set5_psnr(shared_dir, reference):
    psnr = mean_psnr(reference, dataset_pairs(shared_dir, "Set5", 4), 4, DATA_RANGE)
    assert psnr == pytest.approx(SET5_PSNR, abs=0.01)


def test_detect_reads_the_hyper_parameters(state_dict):
    checks.check_detection(rfdn, state_dict, HYPER)


@pytest.mark.parametrize("how", MANGLINGS)
@pytest.mark.parametrize("key", ["B3.c2_d.weight", "B2.esa.conv_max.bias", "c.0.weight"])
def test_a_mangled_state_dict_is_refused_naming_the_key(state_dict, key, how):
    checks.check_refusal(rfdn, state_dict, HYPER, key, how)


def test_a_missing_block_is_refused(state_dict):
    sd = {k: v for k, v in state_dict.items() if not k.startswith("B3.")}
    with pytest.raises(CheckpointError, match=re.escape("numbered [1, 2, 4], not 1..4")):
        rfdn.detect(sd)


def test_graph_is_valid_and_uses_every_weight(state_dict):
    checks.check_graph(rfdn, state_dict, HYPER, DATA_RANGE)


def test_graph_computes_the_reference(shared_dir, state_dict, reference):
    diff = checks.graph_vs_reference(rfdn, reference, state_dict, HYPER, shared_dir, DATA_RANGE)
    assert diff < 1e-3


def test_sparsr_computes_the_reference(shared_dir, state_dict, reference, tmp_path):
    diff = checks.sparsr_vs_reference(rfdn, reference, state_dict, HYPER, shared_dir,
                                      DATA_RANGE, tmp_path)
    assert diff <= 0.01
