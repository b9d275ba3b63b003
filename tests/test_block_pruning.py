"""Block pruning (tools/sparsity_common.prune_blocks, allocate/make_sparsmsr --block):
whole blocks go, smallest L2 norm first, in the output-channel order the engine packs,
and the sparsity is the one asked up to whole blocks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

from allocate import allocate_by_sensitivity, write_sparse_checkpoint  # noqa: E402
from sparsity_common import conv_output_order, prune_blocks, prune_blocks_nm  # noqa: E402
from test_sparsity_tools import _fake_sensitivity  # noqa: E402
from sparsr import _core  # noqa: E402


def block_zero(w, block, order):
    """(blocks, cin * taps) bool: which blocks are all zero, and whether every block
    is either all zero or untouched."""
    rows = w.reshape(w.shape[0], -1)[order]
    groups = [rows[b:b + block] for b in range(0, len(rows), block)]
    return np.stack([(g == 0).all(0) for g in groups])


@pytest.mark.parametrize("cout,block", [(16, 8), (13, 4), (64, 8), (5, 8), (9, 1)])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_prune_blocks_removes_whole_blocks_by_norm(cout, block, fraction):
    rng = np.random.default_rng(cout * 100 + block)
    w = rng.standard_normal((cout, 6, 3, 3)).astype(np.float32)
    order = rng.permutation(cout)
    k = int(round(fraction * w.size))
    out = prune_blocks(w, k, block, order)
    zero = out == 0
    # Survivors are the original weights; the zeros fill whole blocks in `order`.
    np.testing.assert_array_equal(out[~zero], w[~zero])
    rows = zero.reshape(cout, -1)[order]
    for b in range(0, cout, block):
        g = rows[b:b + block]
        assert (g.all(0) | ~g.any(0)).all()
    # As near k as whole blocks allow: within half the largest block.
    assert abs(int(zero.sum()) - k) <= block / 2
    # The smallest blocks went: every zeroed block's norm <= every kept one's.
    sq = np.square(w.astype(np.float64)).reshape(cout, -1)[order]
    norms = np.concatenate([sq[b:b + block].sum(0) for b in range(0, cout, block)])
    dropped = block_zero(out, block, order).reshape(-1)
    if dropped.any() and (~dropped).any():
        assert norms[dropped].max() <= norms[~dropped].min()


def test_prune_blocks_default_order_and_errors():
    w = np.random.default_rng(0).standard_normal((8, 4, 1, 1)).astype(np.float32)
    out = prune_blocks(w, 16, 4)
    rows = (out == 0).reshape(8, -1)
    assert rows.sum() == 16
    assert (rows[:4].all(0) | ~rows[:4].any(0)).all()
    with pytest.raises(ValueError):
        prune_blocks(w, w.size + 1, 4)
    with pytest.raises(ValueError):
        prune_blocks(w, 4, 0)
    with pytest.raises(ValueError):
        prune_blocks(w, 4, 4, np.array([0, 1, 2, 3, 4, 5, 6, 6]))


def test_block_pruned_smsr_checkpoint(smsr_checkpoint, tmp_path):
    """--block 8: every core layer keeps whole blocks of 8 in the engine's packing
    order (the SMSR dense channels first), so bcsr skips them; the sparsity is the
    one asked up to half a block per layer; the engine runs such layers as bcsr."""
    import sparsr
    names = [f"body.{k}.body.body.{i}" for k in range(5) for i in range(4)]
    sens_path, ks = _fake_sensitivity(tmp_path, names)
    sizes = {n: 36864 for n in names}
    alloc = allocate_by_sensitivity(ks, sizes, 0.5)
    path = tmp_path / "block8.pt"
    write_sparse_checkpoint(smsr_checkpoint, path, alloc, block=8)
    base, m = sparsr.load(smsr_checkpoint), sparsr.load(path)
    meta = m.metadata["weight_sparsity"]
    assert meta["block"] == 8
    assert abs(meta["zeros_overall"] - 0.5) < 4 * len(names) / (36864 * len(names))
    orders = []
    for name in names:
        w = m.conv_weight(name)
        order = conv_output_order(m, name)
        orders.append(order)
        assert abs(int(w.size - np.count_nonzero(w)) - alloc[name]) <= 4
        np.testing.assert_array_equal(w[w != 0], base.conv_weight(name)[w != 0])
        packed = np.ascontiguousarray(w[order])
        assert _core.bcsr_kept_fraction(packed, 8) == pytest.approx(np.count_nonzero(w) / w.size)
    # SMSR packs the dense channels first: at least one layer's order is not the identity.
    assert any((o != np.arange(len(o))).any() for o in orders)
    rows = {r["name"]: r for r in m.info()["layers"]} if isinstance(m.info(), dict) else {}
    if rows and _core.isa_supported("avx512"):
        assert any(rows[n]["format"] == "bcsr" for n in names if n in rows)


@pytest.mark.parametrize("cout,cin,block,n,m", [(16, 8, 8, 2, 4), (13, 10, 4, 1, 4),
                                                (9, 16, 8, 4, 8), (8, 6, 8, 3, 4)])
def test_prune_blocks_nm_shares_an_nm_pattern_per_block(cout, cin, block, n, m):
    """Every (block, tap) keeps the same n of each m input channels for all its
    channels, the ones of largest block norm; each output channel is n:m; a short
    last group keeps min(n, width)."""
    rng = np.random.default_rng(cout + cin)
    w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    order = rng.permutation(cout)
    out = prune_blocks_nm(w, n, m, block, order)
    kept = out != 0
    np.testing.assert_array_equal(out[kept], w[kept])
    rows = kept[order]
    sq = np.square(w.astype(np.float64))[order]
    for b in range(0, cout, block):
        g = rows[b:b + block]
        assert (g == g[0]).all()                     # one pattern per block
        norms = sq[b:b + block].sum(0)
        for c0 in range(0, cin, m):
            keep = g[0, c0:c0 + m]                   # (width, 3, 3)
            assert (keep.sum(0) == min(n, keep.shape[0])).all()
            part = norms[c0:c0 + m]
            lo = np.where(keep, part, np.inf).min(0)
            hi = np.where(~keep, part, -np.inf).max(0)
            assert (lo >= hi).all()
    with pytest.raises(ValueError):
        prune_blocks_nm(w, 5, 4, block)
    with pytest.raises(ValueError):
        prune_blocks_nm(w, 2, 4, 0)


def test_nm_prune_block_cli_writes_bcsr(smsr_checkpoint, tmp_path):
    import subprocess
    import sparsr
    out = tmp_path / "nm_block.pt"
    r = subprocess.run([sys.executable, str(TOOLS / "nm_prune.py"), str(smsr_checkpoint), "-o",
                        str(out), "--n", "2", "--m", "4", "--block", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = sparsr.load(out)
    name = "body.0.body.body.1"
    assert m.description["layers"][name] == {"format": "bcsr"}
    w = m.conv_weight(name)
    assert np.count_nonzero(w) == w.size // 2
    packed = np.ascontiguousarray(w[conv_output_order(m, name)])
    assert _core.bcsr_kept_fraction(packed, 8) == pytest.approx(0.5)
