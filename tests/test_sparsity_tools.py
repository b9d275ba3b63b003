"""The weight-sparsity tools: Algorithm 1's search, the Eq. 3-4 allocation, magnitude
pruning, and sparse checkpoints written from the real SMSR weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

from allocate import (allocate_by_sensitivity, allocate_proportional, allocate_uniform,  # noqa: E402
                      load_sensitivity, write_sparse_checkpoint)
from sensitivity import ProbeCache, search_sensitivity  # noqa: E402
from sparsity_common import (SMSR_CORE_LAYERS, core_layers, magnitude_order,  # noqa: E402
                             prune_smallest, restart_nodes, restart_of, target_layers)
from conftest import input_skip_of  # noqa: E402


# -- allocation (Eq. 3-4) --------------------------------------------------------

def test_allocation_equal_layers_is_eq4():
    sizes = {f"l{i}": 36864 for i in range(20)}
    rng = np.random.default_rng(1)
    ks = {n: int(k) for n, k in zip(sizes, rng.integers(15000, 30000, 20))}
    target = 0.35
    alloc = allocate_by_sensitivity(ks, sizes, target)
    M, N = 20, 36864
    for n in sizes:                     # Eq. 4: k'_i = S * M * N * k_i / sum k_j
        exact = target * M * N * ks[n] / sum(ks.values())
        assert abs(alloc[n] - exact) < 1.0
    assert sum(alloc.values()) == round(target * M * N)


@pytest.mark.parametrize("target", [0.0, 0.05, 0.333, 0.5, 0.9, 1.0])
def test_allocation_budget_exact_and_caps_respected(target):
    sizes = {"a": 100, "b": 1000, "c": 37, "d": 5000}
    ks = {"a": 90, "b": 10, "c": 30, "d": 700}
    for cap in (1.0, 0.95):
        if target > cap:
            with pytest.raises(ValueError, match="exceeds"):
                allocate_by_sensitivity(ks, sizes, target, cap)
            continue
        alloc = allocate_by_sensitivity(ks, sizes, target, cap)
        assert sum(alloc.values()) == round(target * sum(sizes.values()))
        assert all(0 <= alloc[n] <= int(cap * sizes[n]) for n in sizes)


def test_allocation_proportional_when_uncapped():
    sizes = {"a": 1000, "b": 1000, "c": 2000}
    ks = {"a": 100, "b": 300, "c": 400}
    alloc = allocate_by_sensitivity(ks, sizes, 0.2)         # budget 800, shares 100/300/400
    assert alloc == {"a": 100, "b": 300, "c": 400}


def test_allocation_redistributes_capped_excess():
    sizes = {"a": 100, "b": 1000, "c": 1000}
    ks = {"a": 800, "b": 100, "c": 100}
    # Budget 1050: a's share 840 > its size 100, so a = 100 and b, c share 950 equally.
    alloc = allocate_by_sensitivity(ks, sizes, 0.5)
    assert alloc == {"a": 100, "b": 475, "c": 475}
    # A cap of 0.5 per layer: a = 50, then b and c split 1000 (exactly their caps).
    alloc = allocate_by_sensitivity(ks, sizes, 0.5, max_layer_sparsity=0.5)
    assert alloc == {"a": 50, "b": 500, "c": 500}
    # Cascading caps: b's share after a is capped then exceeds b's cap too.
    sizes = {"a": 10, "b": 100, "c": 10000}
    alloc = allocate_proportional({"a": 100, "b": 50, "c": 1}, sizes, 0.5, 0.8)
    assert alloc["a"] == 8 and alloc["b"] == 80 and sum(alloc.values()) == 5055


def test_allocation_largest_remainder_rounding():
    sizes = {"a": 10, "b": 10, "c": 10}
    alloc = allocate_by_sensitivity({"a": 1, "b": 1, "c": 1}, sizes, 0.5)   # 15 over 3 -> 5 each
    assert alloc == {"a": 5, "b": 5, "c": 5}
    alloc = allocate_by_sensitivity({"a": 1, "b": 1, "c": 1}, sizes, 0.4)   # 12 -> 4 each
    assert alloc == {"a": 4, "b": 4, "c": 4}
    alloc = allocate_by_sensitivity({"a": 2, "b": 1, "c": 1}, sizes, 0.1)   # 3 -> 1.5, .75, .75
    assert alloc == {"a": 1, "b": 1, "c": 1} and sum(alloc.values()) == 3


def test_uniform_baseline():
    sizes = {"a": 36864, "b": 36864, "c": 1000}
    alloc = allocate_uniform(sizes, 0.35)
    for n in sizes:
        assert abs(alloc[n] - 0.35 * sizes[n]) < 1.0
    assert sum(alloc.values()) == round(0.35 * sum(sizes.values()))


def test_allocation_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="different layers"):
        allocate_by_sensitivity({"a": 1}, {"b": 10}, 0.1)
    with pytest.raises(ValueError, match="zero sensitivity"):
        allocate_by_sensitivity({"a": 0, "b": 0}, {"a": 10, "b": 10}, 0.1)


# -- Algorithm 1 -----------------------------------------------------------------

def _drop_at(k_cross, n):
    """A metric that is 0 up to k_cross and -1 beyond: the answer is k_cross."""
    calls = []

    def evaluate(k):
        calls.append(k)
        return 0.0 if k <= k_cross else -1.0
    return evaluate, calls


@pytest.mark.parametrize("k_cross", [0, 1, 17, 500, 998, 999])
def test_search_finds_the_boundary_of_a_step(k_cross):
    n = 1000
    evaluate, calls = _drop_at(k_cross, n)
    assert search_sensitivity(np.arange(n), evaluate, -0.5) == k_cross
    assert len(calls) <= int(np.ceil(np.log2(n))) + 1


def test_search_monotone_decreasing_metric_and_resolution():
    n = 36864
    metric = lambda k: -((k / n) ** 3)              # smooth, monotone drop
    exact = max(k for k in range(n) if metric(k) >= -0.1)
    assert search_sensitivity(np.arange(n), metric, -0.1) == exact
    coarse = search_sensitivity(np.arange(n), metric, -0.1, resolution=144)
    assert metric(coarse) >= -0.1 and exact - 144 < coarse <= exact


def test_search_metric_on_the_boundary_passes():
    # Algorithm 1 line 11: only P < P_b fails, so P == P_b is kept.
    metric = lambda k: -float(k // 100)
    assert search_sensitivity(np.arange(1000), metric, -3.0) == 399


def test_search_non_monotone_returns_a_local_boundary():
    n = 1024
    # Passes everywhere except a dip on [300, 400) and beyond 800.
    metric = lambda k: -1.0 if (300 <= k < 400 or k > 800) else 0.0
    k = search_sensitivity(np.arange(n), metric, -0.5)
    # Probes 512 (pass), 768 (pass), 896 (fail), ... -> the outer boundary 800.
    assert k == 800
    metric2 = lambda k: -1.0 if (300 <= k < 600 or k > 800) else 0.0
    k2 = search_sensitivity(np.arange(n), metric2, -0.5)
    # 512 fails, 256 passes, then the search closes on the dip's start 299.
    assert k2 == 299 and metric2(k2) >= -0.5 and metric2(k2 + 1) < -0.5


def test_probe_cache_shares_evaluations_between_boundaries():
    n = 4096
    metric = lambda k: -k / n                        # drop grows linearly with k
    cache = ProbeCache(metric)
    results = {}
    for delta in (0.4, 0.3, 0.2, 0.1):              # largest first, as the tool does
        results[delta] = search_sensitivity(np.arange(n), cache, -delta)
    for delta, k in results.items():
        assert k == int(delta * n)                  # metric(k) >= -delta exactly up to delta*n
    separate = 0
    for delta in (0.4, 0.3, 0.2, 0.1):
        fresh = ProbeCache(metric)
        search_sensitivity(np.arange(n), fresh, -delta)
        separate += fresh.evaluations
    assert cache.evaluations < separate
    assert len(cache.values) == cache.evaluations   # no k evaluated twice
    # A cache that already knows the boundary answers without evaluating.
    again = ProbeCache(lambda k: pytest.fail("evaluated a known probe"), cache.values)
    assert search_sensitivity(np.arange(n), again, -0.2) == results[0.2]


# -- magnitude pruning -------------------------------------------------------------

def test_prune_smallest_zeroes_exactly_k_with_ties():
    w = np.array([[0.5, -0.1, 0.1, 0.0], [0.1, -0.5, 0.3, -0.2]], dtype=np.float32)
    for k in range(w.size + 1):
        p = prune_smallest(w, k)
        assert np.count_nonzero(p == 0) == max(k, 1)  # the existing zero is the smallest
        kept = np.abs(p[p != 0])
        zeroed = np.abs(w[(p == 0)])
        if kept.size and zeroed.size:
            assert zeroed.max() <= kept.min()
    # Ties at |w| = 0.1: the earlier flat indices go first.
    p = prune_smallest(w, 3)
    assert p[0, 1] == 0 and p[0, 2] == 0 and p[1, 0] != 0
    with pytest.raises(ValueError):
        prune_smallest(w, w.size + 1)
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    order = magnitude_order(big)
    assert np.count_nonzero(prune_smallest(big, 12345, order) == 0) == 12345


def test_target_layers_order_by_number():
    names = [f"body.{k}.body.body.{i}" for k in range(5) for i in range(4)][::-1]
    names += ["head.0", "body.0.spa_mask.0", "body.0.body.collect", "tail.0"]
    core = target_layers(names, SMSR_CORE_LAYERS)
    assert core == [f"body.{k}.body.body.{i}" for k in range(5) for i in range(4)]


def test_restart_of_is_the_module_of_a_conv(smsr_checkpoint):
    import sparsr
    m = sparsr.load(smsr_checkpoint)
    core = target_layers(m.conv_names(), SMSR_CORE_LAYERS)
    assert core_layers(m) == core
    nodes = restart_nodes(m, core)
    assert nodes == [f"body.{k}" for k in range(5)]
    assert [restart_of(m, n, nodes) for n in core[::4]] == [f"body.{k}" for k in range(5)]
    # After the last module: restart there; before the first: from the start.
    assert restart_of(m, "tail.0", nodes) == "body.4" and restart_of(m, "head.0", nodes) is None


# -- end to end on the converted SMSR ---------------------------------------------

def _fake_sensitivity(tmp_path, names, n=36864):
    ks = {name: int(n * (0.4 + 0.02 * i)) for i, name in enumerate(names)}
    report = {"metric": "psnr", "layers_order": names, "calib": "B100", "calib_images": ["x"],
              "crop": 80,
              "layers": {name: {"weights": n, "k_best": {"0.04": k}} for name, k in ks.items()}}
    path = tmp_path / "sens.json"
    path.write_text(json.dumps(report))
    return path, ks


def test_sparse_checkpoint_end_to_end(smsr_checkpoint, shared_dir, tmp_path):
    import sparsr
    from sparsr.metrics import quantize
    names = [f"body.{k}.body.body.{i}" for k in range(5) for i in range(4)]
    sens_path, ks = _fake_sensitivity(tmp_path, names)
    ks2, sizes, _ = load_sensitivity(sens_path, 0.04)
    assert ks2 == ks
    alloc = allocate_by_sensitivity(ks, sizes, 0.35)
    paths = {}
    for variant, skip in (("a", False), ("b", True)):
        paths[variant] = tmp_path / f"s_{variant}.pt"
        write_sparse_checkpoint(smsr_checkpoint, paths[variant], alloc, input_skip=skip,
                                extra_metadata={"target": 0.35})
    base = sparsr.load(smsr_checkpoint)
    models = {v: sparsr.load(p) for v, p in paths.items()}
    for v, m in models.items():
        meta = m.metadata["weight_sparsity"]
        assert abs(meta["overall"] - 0.35) < 1e-4
        assert input_skip_of(m) is (v == "b")
        for name in names:
            w = m.conv_weight(name)
            assert w.size - np.count_nonzero(w) == alloc[name] == meta["layers"][name]["zeroed"]
            assert m.description["layers"][name]["format"] == "sparse"
            # Only the smallest weights went: the survivors equal the originals.
            orig = base.conv_weight(name)
            np.testing.assert_array_equal(w[w != 0], orig[w != 0])
        # Layers outside the targets are untouched.
        np.testing.assert_array_equal(m.conv_weight("tail.0"), base.conv_weight("tail.0"))

    from PIL import Image
    with Image.open(shared_dir / "data" / "Set5" / "LR_bicubic" / "X2" / "birdx2.png") as im:
        lr = np.asarray(im.convert("RGB"))[:48, :64].copy()
    fa, fb = models["a"].forward(lr), models["b"].forward(lr)
    np.testing.assert_array_equal(quantize(fa.output), quantize(fb.output))
    assert fa.macs > fb.macs
    f0 = base.forward(lr)
    assert not np.array_equal(quantize(f0.output), quantize(fb.output))


def test_make_sparsmsr_levels(smsr_checkpoint, tmp_path):
    import sparsr
    from make_sparsmsr import make_models
    names = [f"body.{k}.body.body.{i}" for k in range(5) for i in range(4)]
    sens_path, _ = _fake_sensitivity(tmp_path, names)
    written = make_models(smsr_checkpoint, sens_path, tmp_path / "out")
    assert sorted(written) == ["1a", "1b", "2a", "2b", "3a", "3b"]
    for tag, target in (("1b", 0.065), ("2a", 0.24), ("3b", 0.35)):
        m = sparsr.load(written[tag])
        assert abs(m.metadata["weight_sparsity"]["overall"] - target) < 1e-4
        assert input_skip_of(m) is tag.endswith("b")


def test_sensitivity_cli_small_run_and_resume(smsr_checkpoint, shared_dir, tmp_path):
    import subprocess
    out = tmp_path / "sens.json"
    cmd = [sys.executable, str(TOOLS / "sensitivity.py"), str(smsr_checkpoint), "-o", str(out),
           "--layers", r"^body\.4\.body\.body\.[23]$", "--calib-count", "2", "--crop", "24",
           "--resolution", "2048", "--deltas", "0.05", "0.5"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    report = json.loads(out.read_text())
    assert report["layers_order"] == ["body.4.body.body.2", "body.4.body.body.3"]
    assert report["calib_images"] == sorted(report["calib_images"]) and len(report["calib_images"]) == 2
    for name in report["layers_order"]:
        entry = report["layers"][name]
        k_small, k_big = entry["k_best"]["0.05"], entry["k_best"]["0.5"]
        assert 0 <= k_small <= k_big < 36864
        # Every answer passed its boundary; the probe one resolution step above failed.
        probes = {int(k): v for k, v in entry["probes"].items()}
        res = entry["resolution"]
        for d, k in ((0.05, k_small), (0.5, k_big)):
            boundary = report["baseline"] - d
            assert k == 0 or probes[k] >= boundary
            assert k + res >= 36864 or any(k < j <= k + res and v < boundary
                                           for j, v in probes.items())
    assert "body.4.body.body.3" in run.stdout
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, check=True)
    assert "resuming: 2 layers done" in again.stdout
    assert json.loads(out.read_text())["layers"] == report["layers"]
