"""The PyTorch SMSR reference (tests/smsr_reference.py) reproduces the authors' numbers.

The authors' own code gives a Set5 x2 mean PSNR of 37.991 dB on the files in
``<shared>/data`` with the official checkpoint; everything else that compares
against the reference relies on this.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install sparsr[tools])")

from PIL import Image  # noqa: E402

from sparsr.metrics import psnr_y, quantize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smsr_reference  # noqa: E402

CHECKPOINT = "models/smsr_x2_official.pt"

# ``shared_dir`` (conftest.py) skips when SPARSR_SHARED / ../shared is absent.


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return smsr_reference.load_official_state_dict(shared_dir / CHECKPOINT)


def _load(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def test_set5_psnr_matches_the_authors_code(shared_dir, state_dict):
    set5 = shared_dir / "data" / "Set5"
    scores = []
    for hr_path in sorted((set5 / "HR").glob("*.png")):
        lr = _load(set5 / "LR_bicubic" / "X2" / f"{hr_path.stem}x2.png")
        out, masks = smsr_reference.reference_forward(state_dict, lr, mode="mask")
        assert out.dtype == np.float32 and out.shape == (2 * lr.shape[0], 2 * lr.shape[1], 3)
        assert len(masks) == 5
        for mask in masks:
            assert mask.dtype == np.bool_ and mask.shape == lr.shape[:2]
            assert 0.0 < mask.mean() < 1.0  # the masks really skip work, and not all of it
        scores.append(psnr_y(quantize(out), _load(hr_path), 2))
    assert len(scores) == 5
    # 0.005 dB, not 0.01: adding the sparse-to-dense term at every pixel gives 38.000.
    assert np.mean(scores) == pytest.approx(37.991, abs=0.005)


def test_dense_mode_is_the_plain_dense_network(state_dict):
    # With every mask set, the sparse mask convs are ordinary convs: compare against
    # F.conv2d over the whole block, written independently of channel masks.
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(13, 18, 3)).astype(np.uint8)
    out, masks = smsr_reference.reference_forward(state_dict, img, mode="dense")
    assert all(m.all() for m in masks)

    sd = state_dict
    with torch.no_grad():
        x0 = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None] - 255 * torch.tensor(
            [0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
        h = F.conv2d(F.relu(F.conv2d(x0, sd["head.0.weight"], sd["head.0.bias"], padding=1)),
                     sd["head.2.weight"], sd["head.2.bias"], padding=1)
        x, smm = h, []
        for k in range(5):
            y, layers = x, []
            for i in range(4):
                y = F.relu(F.conv2d(y, sd[f"body.{k}.body.body.{i}.weight"], padding=1))
                layers.append(y)
            y = F.conv2d(torch.cat(layers, 1), sd[f"body.{k}.body.collect.weight"], sd[f"body.{k}.body.collect.bias"])
            a = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[f"body.{k}.ca.conv_du.0.weight"],
                                sd[f"body.{k}.ca.conv_du.0.bias"]))
            a = torch.sigmoid(F.conv2d(a, sd[f"body.{k}.ca.conv_du.2.weight"], sd[f"body.{k}.ca.conv_du.2.bias"]))
            x = y * a + x
            smm.append(x)
        y = F.relu(F.conv2d(torch.cat(smm, 1), sd["collect.0.weight"], sd["collect.0.bias"]))
        y = F.conv2d(y, sd["collect.2.weight"], sd["collect.2.bias"], padding=1) + h
        y = F.pixel_shuffle(F.conv2d(y, sd["tail.0.weight"], sd["tail.0.bias"], padding=1), 2)
        y = y + F.interpolate(x0, scale_factor=2, mode="bicubic", align_corners=False)
        y = y + 255 * torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    expected = y[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, expected, atol=2e-3)


def test_odd_sizes_leave_the_last_row_and_column_unimportant(state_dict):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(15, 21, 3)).astype(np.uint8)
    out, masks = smsr_reference.reference_forward(state_dict, img, mode="mask")
    assert out.shape == (30, 42, 3)
    for mask in masks:
        assert mask.shape == (15, 21)
        assert not mask[-1].any() and not mask[:, -1].any()
