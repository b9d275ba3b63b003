"""The PyTorch references of the imported architectures reproduce the authors'
Set5 Y-PSNR (<shared>/README.md), so the graphs compared against them are the
networks that were evaluated: CARN-M x2 and x4, realesr-animevideov3 x4."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")

from archs import checks  # noqa: E402
from archs.carn_m import CARNM  # noqa: E402
from archs.srvgg import SRVGGNetCompact  # noqa: E402
from conftest import dataset_pairs  # noqa: E402

from sparsr.importers import pth  # noqa: E402
from sparsr.metrics import psnr_y, quantize  # noqa: E402


def set5_psnr(shared_dir, scale, net, *args) -> float:
    """Mean Y-PSNR over Set5 of a 0..1 RGB network, its output rounded to uint8."""
    scores = []
    for _, lr, hr in dataset_pairs(shared_dir, "Set5", scale):
        # channels_last: PyTorch's CPU group convs are about twice as fast in it.
        x = checks.to_input(lr, 1.0).to(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = net(x, *args)[0].permute(1, 2, 0).numpy() * 255.0
        assert out.shape == (scale * lr.shape[0], scale * lr.shape[1], 3)
        scores.append(psnr_y(quantize(out), hr, scale))
    assert len(scores) == 5
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def carn_m(shared_dir):
    sd = pth.read_state_dict(shared_dir / "models" / "carn_m.pth")
    return checks.load_strictly(CARNM(), sd)


@pytest.mark.parametrize("scale, reference", [(2, 37.678), (4, 31.883)])
def test_carn_m_set5(shared_dir, carn_m, scale, reference):
    assert set5_psnr(shared_dir, scale, carn_m, scale) == pytest.approx(reference, abs=0.001)


def test_realesr_animevideov3_set5(shared_dir):
    sd = pth.read_state_dict(shared_dir / "models" / "realesr_animevideov3_x4.pth")
    net = checks.load_strictly(SRVGGNetCompact(), sd)
    assert set5_psnr(shared_dir, 4, net) == pytest.approx(28.233, abs=0.001)
