"""Each real checkpoint is claimed by the right architecture: RFDN, RLFN, IMDN
and SPAN claim their own files and no other shared checkpoint, and no other
architecture in the registry claims theirs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="reading .pth files needs torch")

from archs.common import read_state_dict  # noqa: E402

from sparsr.importers.archs import ARCHITECTURES, imdn, rfdn, rlfn, span  # noqa: E402

THESE = [rfdn, rlfn, imdn, span]
OWNER = {"rfdn_aim_x4.pth": "rfdn", "rlfn_ntire2022_x4.pth": "rlfn", "imdn_x2.pth": "imdn",
         "imdn_x4.pth": "imdn", "span_ch28_x4.pth": "span", "smsr_x2_official.pt": None,
         "carn_m.pth": None, "realesr_animevideov3_x4.pth": None, "fsrcnn_x2_y.pth": None,
         "dncnn_25_gray.pth": None}


def _state_dict(shared_dir, name):
    sd = read_state_dict(shared_dir / "models" / name)
    return sd["params"] if set(sd) == {"params"} else sd    # Real-ESRGAN's wrapping


@pytest.mark.parametrize("name", sorted(OWNER))
def test_these_architectures_claim_only_their_own_checkpoints(shared_dir, name):
    sd = _state_dict(shared_dir, name)
    claimed = [arch.NAME for arch in THESE if arch.detect(sd) is not None]
    assert claimed == ([OWNER[name]] if OWNER[name] else [])


@pytest.mark.parametrize("name", sorted(k for k, v in OWNER.items() if v))
def test_no_other_registered_architecture_claims_them(shared_dir, name):
    sd = _state_dict(shared_dir, name)
    claimed = [arch.NAME for arch in ARCHITECTURES if arch.detect(sd) is not None]
    assert claimed == [OWNER[name]]
