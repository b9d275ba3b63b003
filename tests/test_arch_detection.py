"""Each real checkpoint is claimed by exactly one architecture, and the
checkpoints of networks these importers do not handle by none."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="reading .pth files needs torch")

from archs.common import read_state_dict  # noqa: E402

from sparsr.importers.archs import ARCHITECTURES  # noqa: E402

OWNER = {"rfdn_aim_x4.pth": "rfdn", "rlfn_ntire2022_x4.pth": "rlfn", "imdn_x2.pth": "imdn",
         "imdn_x4.pth": "imdn", "span_ch28_x4.pth": "span", "smsr_x2_official.pt": None,
         "carn_m.pth": None, "realesr_animevideov3_x4.pth": None, "fsrcnn_x2_y.pth": None,
         "dncnn_25_gray.pth": None}


@pytest.mark.parametrize("name", sorted(OWNER))
def test_exactly_the_right_architecture_claims_a_checkpoint(shared_dir, name):
    sd = read_state_dict(shared_dir / "models" / name)
    if set(sd) == {"params"}:      # Real-ESRGAN's wrapping
        sd = sd["params"]
    claimed = [arch.NAME for arch in ARCHITECTURES if arch.detect(sd) is not None]
    assert claimed == ([OWNER[name]] if OWNER[name] else [])
