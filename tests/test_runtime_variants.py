"""Runtime features the offline tools build on: sparse storage in checkpoints,
replacing weights in a loaded network, restarting a pass at a module, and the
input-skip switch (SparSMSR "a" vs "b")."""

from __future__ import annotations

import numpy as np
import pytest

import sparsr
from conftest import with_input_skip
from sparsr import checkpoint
from sparsr.errors import CheckpointError


def test_sparse_encoding_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    w[3] = 0
    enc = checkpoint.encode_sparse({"a.weight": w, "b": np.ones(3, np.float32)}, ["a.weight"])
    assert "a.weight" not in enc and enc["a.weight.values"].size == np.count_nonzero(w)
    assert enc["a.weight.mask"].nbytes == (w.size + 7) // 8
    path = tmp_path / "s.pt"
    checkpoint.save(path, {}, enc)
    _, tensors, _ = checkpoint.load(path)
    dec = checkpoint.decode_sparse(tensors)
    np.testing.assert_array_equal(dec["a.weight"], w)
    np.testing.assert_array_equal(dec["b"], np.ones(3))


def test_sparse_encoding_inconsistent_is_refused():
    w = np.eye(4, dtype=np.float32)
    enc = checkpoint.encode_sparse({"w": w}, ["w"])
    enc["w.values"] = enc["w.values"][:-1]
    with pytest.raises(CheckpointError, match="3 values for 4 nonzero"):
        checkpoint.decode_sparse(enc)
    enc = checkpoint.encode_sparse({"w": w}, ["w"])
    del enc["w.shape"]
    with pytest.raises(CheckpointError, match="lacks 'w.shape'"):
        checkpoint.decode_sparse(enc)


def _image(shared_dir):
    from conftest import dataset_pairs
    _, lr, _ = next(dataset_pairs(shared_dir, "Set5", 2))
    return lr[:64, :80]


def test_cached_restart_equals_a_full_pass(smsr_checkpoint, shared_dir):
    net = sparsr.load(smsr_checkpoint)
    lr = _image(shared_dir)
    modules = [f"body.{k}" for k in range(5)]
    cache = net.stages(lr, modules, "mask")
    full = net.forward(lr, "mask")
    for k in (0, 2, 4):
        again = net.forward(lr, "mask", cache=cache, start=f"body.{k}")
        np.testing.assert_array_equal(again.output, full.output)
        assert len(again.masks) == 5
    with pytest.raises(ValueError, match="cache"):
        net.forward(lr, "mask", start="body.2")


def test_set_conv_weight_matches_a_saved_sparsified_checkpoint(smsr_checkpoint, shared_dir,
                                                               tmp_path):
    model, tensors, meta = checkpoint.load(smsr_checkpoint)
    name = "body.2.body.body.1"
    w = tensors[name + ".weight"].copy()
    w[np.abs(w) < np.quantile(np.abs(w), 0.5)] = 0
    lr = _image(shared_dir)

    net = sparsr.load(smsr_checkpoint)
    cache = net.stages(lr, [f"body.{k}" for k in range(5)], "mask")
    before = net.forward(lr, "mask").output
    net.set_conv_weight(name, w)
    changed = net.forward(lr, "mask", cache=cache, start="body.2")
    assert np.abs(changed.output - before).max() > 0.01

    tensors = dict(tensors)
    tensors[name + ".weight"] = w
    path = tmp_path / "sparse.pt"
    checkpoint.save(path, model, checkpoint.encode_sparse(tensors, [name + ".weight"]), meta)
    assert path.stat().st_size < smsr_checkpoint.stat().st_size
    fresh = sparsr.load(path).forward(lr, "mask")
    np.testing.assert_array_equal(fresh.output, changed.output)
    with pytest.raises(ValueError, match="shape"):
        net.set_conv_weight(name, w[:, :3])


def test_without_input_skip_same_image_more_macs(smsr_checkpoint, shared_dir, tmp_path):
    model, tensors, meta = checkpoint.load(smsr_checkpoint)
    path = tmp_path / "no_input_skip.pt"
    checkpoint.save(path, with_input_skip(model, False), tensors, meta)
    lr = _image(shared_dir)
    b = sparsr.load(smsr_checkpoint).forward(lr, "mask")
    a = sparsr.load(path).forward(lr, "mask")
    np.testing.assert_allclose(a.output, b.output, atol=1e-3)
    for k in range(5):
        np.testing.assert_array_equal(a.masks[k], b.masks[k])
    core = [f"body.{k}.body.body.{i}" for k in range(5) for i in range(1, 4)]
    assert sum(a.layers[n].macs for n in core) > sum(b.layers[n].macs for n in core)
    assert a.layers["body.0.body.body.0"].macs == b.layers["body.0.body.body.0"].macs
