"""tools/torch_smsr.py (the PyTorch form used by the tools and the benchmark
baseline) computes what sparsr computes, dense and masked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch model needs torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import torch_smsr  # noqa: E402
from conftest import dataset_pairs  # noqa: E402

from sparsr import checkpoint  # noqa: E402


@pytest.mark.parametrize("mode", ["dense", "mask"])
def test_torch_model_matches_sparsr(smsr_model, smsr_checkpoint, shared_dir, mode):
    _, tensors, _ = checkpoint.load(smsr_checkpoint)
    net = torch_smsr.SMSR.from_state_dict(tensors).eval()
    _, lr, _ = next(dataset_pairs(shared_dir, "Set5", 2))
    lr = np.ascontiguousarray(lr[:50, :70])
    x = torch.from_numpy(lr.copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        got = net(x, masks=(mode == "mask"))[0].permute(1, 2, 0).numpy()
    want = smsr_model.forward(lr, mode).output
    assert np.abs(got - want).max() <= 1e-2
