"""Every real checkpoint in <shared>/models converts from its ONNX export to the
same network: the PyTorch reference (tests/archs/references.py) exported by
torch.onnx (opset 17, dynamic H and W), converted by importers.convert and run
by sparsr gives what the checkpoint converted from the .pth gives, on a Set14
LR crop, to 0.01 on 0..255.

SMSR is compared in its dense form (every spatial mask one; the .pth
checkpoint run in mode "dense"): its masked inference thresholds features
computed from the image, which no sparsr op but `smsr_module` expresses, and
the importer refuses that export naming the op.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch references need torch")
pytest.importorskip("onnx", reason="converting ONNX files needs onnx")

from archs.checks import lr_crop  # noqa: E402
from archs.references import export_onnx, onnx_options, reference_module  # noqa: E402
from archs.smsr import SMSR  # noqa: E402

import sparsr  # noqa: E402
from sparsr.errors import CheckpointError  # noqa: E402
from sparsr.importers import convert, pth  # noqa: E402

MAX_ABS_255 = 0.01
CROP = (40, 48)

# id: (checkpoint, architecture, scale)
MODELS = {
    "smsr_x2": ("smsr_x2_official.pt", "smsr", 2),
    "carn_m_x2": ("carn_m.pth", "carn_m", 2),
    "carn_m_x3": ("carn_m.pth", "carn_m", 3),
    "carn_m_x4": ("carn_m.pth", "carn_m", 4),
    "rfdn_x4": ("rfdn_aim_x4.pth", "rfdn", 4),
    "rlfn_x4": ("rlfn_ntire2022_x4.pth", "rlfn", 4),
    "imdn_x2": ("imdn_x2.pth", "imdn", 2),
    "imdn_x4": ("imdn_x4.pth", "imdn", 4),
    "span_x4": ("span_ch28_x4.pth", "span", 4),
    "realesr_animevideov3_x4": ("realesr_animevideov3_x4.pth", "srvgg", 4),
    "fsrcnn_x2_y": ("fsrcnn_x2_y.pth", "fsrcnn", 2),
    "dncnn_25_grey": ("dncnn_25_gray.pth", "dncnn", 1),
}


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_onnx_export_converts_to_the_same_network(shared_dir, tmp_path, model_id):
    checkpoint, name, scale = MODELS[model_id]
    src = shared_dir / "models" / checkpoint
    sd = pth.read_state_dict(src)
    options = onnx_options(name, sd)
    onnx_file = tmp_path / f"{model_id}.onnx"
    export_onnx(reference_module(name, sd, scale), onnx_file,
                channels=3 if options["color"] == "rgb" else 1, size=CROP)

    from_onnx = convert(onnx_file, tmp_path / "onnx.pt", scale=scale, **options)
    from_pth = convert(src, tmp_path / "pth.pt", scale=scale)
    assert from_onnx["io"] == from_pth["io"]
    assert from_onnx["io"]["scale"] == scale

    # Set14 has LR images at x2 and x4; x3 and x1 networks take the x2 ones.
    img = lr_crop(shared_dir, 4 if scale == 4 else 2, *CROP)
    mode = "dense" if name == "smsr" else "mask"
    onnx_model = sparsr.load(tmp_path / "onnx.pt")
    assert onnx_model.metadata["source"] == "onnx"
    got = onnx_model.forward(img).output
    want = sparsr.load(tmp_path / "pth.pt").forward(img, mode=mode).output
    assert got.shape == want.shape == (CROP[0] * scale, CROP[1] * scale, 3)
    diff = float(np.abs(got.astype(np.float64) - want).max())
    assert diff <= MAX_ABS_255, f"{model_id}: max abs difference {diff:.4g} on 0..255"


def test_smsr_masked_export_is_refused_naming_the_op(shared_dir, tmp_path):
    sd = pth.read_state_dict(shared_dir / "models" / "smsr_x2_official.pt")
    onnx_file = tmp_path / "smsr_masked.onnx"
    export_onnx(SMSR(sd, masks=True).eval(), onnx_file, channels=3, size=CROP)
    with pytest.raises(CheckpointError, match=r"\((Pad|Greater)\)"):
        convert(onnx_file, tmp_path / "smsr_masked.pt", input_range=255.0)
