"""SMSR through sparsr against the independent PyTorch reference in
tests/smsr_reference.py: outputs before rounding within 1e-2 on 0..255, and
identical spatial masks, on Set5 and on random odd-sized inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference implementation needs torch")

import smsr_reference as reference  # noqa: E402
from conftest import dataset_pairs, smsr_modules, with_input_skip  # noqa: E402

import sparsr  # noqa: E402
from sparsr import metrics  # noqa: E402

TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def state_dict(shared_dir):
    return reference.load_official_state_dict(shared_dir / "models" / "smsr_x2_official.pt")


def _compare(model, state_dict, lr, mode):
    want, want_masks = reference.reference_forward(state_dict, lr, mode=mode)
    got = model.forward(lr, mode)
    assert got.output.shape == want.shape
    assert len(got.masks) == len(want_masks) == 5
    for k, (a, b) in enumerate(zip(got.masks, want_masks)):
        assert a.shape == b.shape
        assert (a != b).sum() == 0, f"spatial mask of module {k} differs at {(a != b).sum()} pixels"
    diff = np.abs(got.output - want).max()
    assert diff <= TOLERANCE, f"max abs difference {diff}"
    return got, want


@pytest.mark.parametrize("mode", ["mask", "dense"])
def test_set5_matches_reference(smsr_model, state_dict, shared_dir, mode):
    for name, lr, hr in dataset_pairs(shared_dir, "Set5", 2):
        got, _ = _compare(smsr_model, state_dict, lr, mode)
        if mode == "mask":
            assert 0.0 < np.mean([m.mean() for m in got.masks]) < 1.0, name


def _textured(rng, h, w):
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 2.7 + y / 5.1) * (x > w // 3) + 40 * (y > h // 2)
    img = base[..., None] + rng.normal(0, 4, (h, w, 3)) + np.array([0, 20, -20])
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [(31, 47), (17, 9), (3, 5), (5, 3), (2, 63), (65, 2)])
def test_random_odd_sizes_match_reference(smsr_model, state_dict, size):
    rng = np.random.default_rng(sum(size))
    lr = _textured(rng, *size)
    for mode in ("mask", "dense"):
        _compare(smsr_model, state_dict, lr, mode)


def test_levels_agree_on_a_real_image(smsr_checkpoint, shared_dir):
    """The whole network at every available ISA level: same masks, same output."""
    _, lr, _ = next(dataset_pairs(shared_dir, "Set5", 2))
    lr = lr[:60, :90]
    outs = {}
    for level in ("scalar", "avx2", "avx512"):
        if sparsr._core.isa_supported(level):
            outs[level] = sparsr.load(smsr_checkpoint, isa=level).forward(lr, "mask")
    base = outs.pop("scalar")
    for level, got in outs.items():
        for a, b in zip(base.masks, got.masks):
            np.testing.assert_array_equal(a, b)
        assert np.abs(got.output - base.output).max() <= TOLERANCE, level
        assert got.macs == base.macs


def test_executed_macs_follow_the_masks(smsr_model, shared_dir, state_dict):
    """Core-layer MACs executed = the four branches of the paper, counted from
    the masks: dense->dense everywhere, everything else at important pixels."""
    _, lr, _ = next(dataset_pairs(shared_dir, "Set5", 2))
    got = smsr_model.forward(lr, "mask")
    h, w = lr.shape[:2]
    for k in range(5):
        dense_out, _ = reference.channel_masks(state_dict[f"body.{k}.body.ch_mask"])
        dense_out = dense_out.numpy().astype(bool)   # (layers, C)
        important = int(got.masks[k].sum())
        for i in range(4):
            d_in = 64 if i == 0 else int(dense_out[i - 1].sum())
            d_out = int(dense_out[i].sum())
            expect = 9 * ((h * w - important) * d_in * d_out + important * 64 * 64)
            assert got.layers[f"body.{k}.body.body.{i}"].macs == expect
            assert got.layers[f"body.{k}.body.body.{i}"].dense_macs == 9 * h * w * 64 * 64
    dense = smsr_model.forward(lr, "dense")
    assert dense.macs == dense.dense_macs
    assert got.macs < dense.macs


def test_set5_psnr_of_the_official_weights(smsr_model, shared_dir):
    """The authors' code gives 37.991 dB on these files."""
    values = [metrics.psnr_y(smsr_model.upscale(lr), hr, 2)
              for _, lr, hr in dataset_pairs(shared_dir, "Set5", 2)]
    assert np.mean(values) == pytest.approx(37.99, abs=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["Set14", "B100"])
def test_dataset_psnr_matches_the_reference(smsr_model, state_dict, shared_dir, dataset):
    """Mean PSNR within 0.02 dB of the authors' computation (the reference) on
    Set14 (odd sizes, a greyscale image) and B100."""
    ours, theirs = [], []
    for _, lr, hr in dataset_pairs(shared_dir, dataset, 2):
        want, _ = reference.reference_forward(state_dict, lr, mode="mask")
        ours.append(metrics.psnr_y(smsr_model.upscale(lr), hr, 2))
        theirs.append(metrics.psnr_y(metrics.quantize(want), hr, 2))
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.02
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 0.05


@pytest.mark.parametrize("input_skip", [True, False])
def test_extreme_channel_masks_match_reference(smsr_checkpoint, state_dict, tmp_path,
                                               input_skip):
    """Module 1 with no dense channel in any layer (the collect then adds only
    its bias at unimportant pixels), module 2 with every channel dense, in both
    input-skip settings: the engine still matches the reference."""
    from sparsr import checkpoint
    model, tensors, metadata = checkpoint.load(smsr_checkpoint)
    sd = dict(state_dict)
    for k, dense in ((1, False), (2, True)):
        name = f"body.{k}.body.ch_mask"
        logits = np.zeros(tensors[name].shape, np.float32)
        logits[..., 0 if dense else 1] = 5.0
        tensors[name] = logits
        sd[name] = torch.from_numpy(logits.copy())
    model = with_input_skip(model, input_skip)
    path = tmp_path / "extreme.pt"
    checkpoint.save(path, model, tensors, metadata)
    net = sparsr.load(path)
    assert sum(smsr_modules(net)[1].n_dense) == 0
    assert smsr_modules(net)[2].n_dense == [64] * 4
    lr = _textured(np.random.default_rng(7), 29, 41)
    got, _ = _compare(net, sd, lr, "mask")
    assert 0 < np.mean([m.mean() for m in got.masks]) < 1
