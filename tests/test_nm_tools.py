"""The N:M tools: magnitude N:M pruning, refusals, the SLS search pieces (Eq. 1-7) on toy
cases, a tiny search that must reach its budget, and an N:M checkpoint of the real SMSR."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the N:M tools need torch")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import nm_common  # noqa: E402
import nm_prune  # noqa: E402
import sls_search  # noqa: E402
from nm_common import NMError  # noqa: E402
from sparsity_common import SMSR_CORE_LAYERS, target_layers  # noqa: E402
from conftest import smsr_modules, with_input_skip  # noqa: E402


def _core(names):
    """SMSR's 20 core layers among names (by their checkpoint names)."""
    return target_layers(names, SMSR_CORE_LAYERS)


def _groups(w: np.ndarray, m: int) -> np.ndarray:
    cout, cin, kh, kw = w.shape
    return w.transpose(0, 2, 3, 1).reshape(-1, m)


# -- magnitude N:M pruning ------------------------------------------------------------

@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8), (8, 32), (4, 32)])
def test_nm_prune_keeps_exactly_the_n_largest_per_group(n, m):
    rng = np.random.default_rng(n * 100 + m)
    w = rng.standard_normal((5, 2 * m, 3, 3)).astype(np.float32)
    pruned = nm_common.nm_prune(w, n, m)
    gw, gp = _groups(w, m), _groups(pruned, m)
    assert np.all((gp != 0).sum(1) == n)
    for row_w, row_p in zip(gw, gp):
        kept = np.flatnonzero(row_p)
        assert set(kept) == set(np.argsort(-np.abs(row_w), kind="stable")[:n])
        np.testing.assert_array_equal(row_p[kept], row_w[kept])   # kept weights unchanged
    assert nm_common.satisfies_nm(pruned, n, m)
    assert not nm_common.satisfies_nm(w, n, m)


def test_nm_prune_groups_run_along_input_channels():
    # one group = M consecutive input channels at one (cout, ky, kx), not along kx
    w = np.zeros((1, 4, 1, 2), np.float32)
    w[0, :, 0, 0] = [1, 2, 3, 4]
    w[0, :, 0, 1] = [4, 3, 2, 1]
    pruned = nm_common.nm_prune(w, 2, 4)
    np.testing.assert_array_equal(pruned[0, :, 0, 0], [0, 0, 3, 4])
    np.testing.assert_array_equal(pruned[0, :, 0, 1], [4, 3, 0, 0])


def test_nm_prune_ties_keep_exactly_n_lower_channel_first():
    w = np.zeros((2, 8, 1, 1), np.float32)
    w[0, :, 0, 0] = [1, -1, 1, -1, 1, 1, 1, 1]       # all tied
    w[1, :, 0, 0] = [0, 0, 0, 0, 0, 0, 0, 5]         # fewer nonzeros than N
    pruned = nm_common.nm_prune(w, 2, 4)
    np.testing.assert_array_equal(pruned[0, :, 0, 0], [1, -1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pruned[1, :, 0, 0], [0, 0, 0, 0, 0, 0, 0, 5])
    assert nm_common.satisfies_nm(pruned, 2, 4)


@pytest.mark.parametrize("n,m,msg", [(5, 4, "N=5 > M=4"), (0, 4, "at least 1"),
                                     (2, 6, "M=6 is not supported"), (2, 64, "M=64")])
def test_check_nm_refuses(n, m, msg):
    with pytest.raises(NMError, match=msg):
        nm_common.check_nm(n, m)


def test_select_layers_default_leaves_ineligible_dense_and_reports():
    shapes = {"head.0": (64, 3, 3, 3), "body.0.body.body.0": (64, 64, 3, 3),
              "body.0.body.body.1": (64, 60, 3, 3), "body.0.body.body.2": (64, 4, 3, 3),
              "body.0.ca.conv_du.2": (64, 4, 1, 1), "down": (64, 64, 3, 3),
              "tail.0": (12, 64, 3, 3)}
    core = ["body.0.body.body.0", "body.0.body.body.1", "body.0.body.body.2"]
    packed = set(shapes) - {"down"}
    chosen, dense = nm_prune.select_layers(shapes, 8, None, False, core, packed)
    # 60 channels at M = 8: seven groups of 8 and a short one of 4.
    assert chosen == ["body.0.body.body.0", "body.0.body.body.1"]
    assert set(dense) == {"body.0.body.body.2"}
    assert "fewer than M=8" in dense["body.0.body.body.2"]
    chosen, dense = nm_prune.select_layers(shapes, 8, None, True, core, packed)
    assert chosen == ["body.0.body.body.0", "body.0.body.body.1", "tail.0"]
    assert set(dense) == {"head.0", "body.0.body.body.2", "body.0.ca.conv_du.2", "down"}
    assert "no N:M kernel" in dense["down"]
    with pytest.raises(NMError, match="body.0.body.body.2 has 4 input channels"):
        nm_prune.select_layers(shapes, 8, r"body\.0\.body\.body", False, core, packed)
    with pytest.raises(NMError, match="layer down is not a 1x1 or 3x3 stride-1"):
        nm_prune.select_layers(shapes, 8, r"^down$", False, core, packed)
    with pytest.raises(NMError, match="matches no convolution"):
        nm_prune.select_layers(shapes, 8, r"^nothing$", False, core, packed)


def test_short_last_group_keeps_n_of_its_width():
    """50 input channels at 2:4: 12 groups of 4 and a short one of 2 (channels 48, 49)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 50, 3, 3)).astype(np.float32)
    pruned = nm_common.nm_prune(w, 2, 4)
    assert nm_common.satisfies_nm(pruned, 2, 4)
    groups = (pruned.transpose(0, 2, 3, 1) != 0)
    assert (groups[..., :48].reshape(3, 3, 3, 12, 4).sum(-1) == 2).all()
    assert (groups[..., 48:].sum(-1) == 2).all()          # both of the short group kept
    one = nm_common.nm_prune(w, 1, 4)
    short = np.abs(w[:, 48:]).argmax(1)                   # the larger of channels 48, 49
    np.testing.assert_array_equal((one[:, 48:] != 0).argmax(1), short)
    parts = nm_common.decompose_1m(torch.from_numpy(w), 4)
    torch.testing.assert_close(sum(parts), torch.from_numpy(w), rtol=0, atol=0)
    assert not nm_common.nm_eligible((3, 3, 3, 3), 4) and nm_common.nm_eligible((3, 4, 3, 3), 4)


# -- SLS pieces ----------------------------------------------------------------------

def test_decomposition_sums_back_and_is_magnitude_ranked():
    rng = np.random.default_rng(1)
    w = torch.from_numpy(rng.standard_normal((3, 16, 3, 3)).astype(np.float32))
    parts = nm_common.decompose_1m(w, 8)
    assert len(parts) == 8
    torch.testing.assert_close(sum(parts), w, rtol=0, atol=0)
    for part in parts:
        assert nm_common.satisfies_nm(part.numpy(), 1, 8)
    grouped = np.stack([_groups(p.abs().numpy(), 8).sum(1) for p in parts])   # (M, groups)
    assert np.all(np.diff(grouped, axis=0) <= 0)          # tensor i holds the i-th largest


def test_priorities_non_increasing_and_ste_gates():
    k = torch.tensor([1.0, 0.9, 0.6, 0.5, 1.0, 0.2, 0.8], requires_grad=True)
    p = sls_search.priorities_from(k)
    assert p[0] == 1 and p.shape == (8,)
    assert torch.all(p[1:] <= p[:-1])
    torch.testing.assert_close(p[1:], torch.cumprod(k, 0))
    b = sls_search.ste_gates(p, 0.5)
    np.testing.assert_array_equal(b.detach().numpy(), (p > 0.5).float().detach().numpy())
    # backward is the identity on p: d(sum_i c_i b_i)/dp = c
    c = torch.arange(8, dtype=torch.float32)
    (gp,) = torch.autograd.grad((b * c).sum(), p, retain_graph=True)
    torch.testing.assert_close(gp, c)
    (gk,) = torch.autograd.grad(b.sum(), k)
    k2 = k.detach().clone().requires_grad_(True)
    (gk_ref,) = torch.autograd.grad(sls_search.priorities_from(k2).sum(), k2)
    torch.testing.assert_close(gk, gk_ref)


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_mac_regulariser_and_lambda_schedule_follow_eq5_to_7():
    torch.manual_seed(0)
    net = _Toy()
    pruner = sls_search.SLSPruner(net, {"a": net.a, "b": net.b}, 4)
    # Eq. 5 C_original per output pixel: a 8*8*9 = 576, b 16*8*9 = 1152 -> shares 1/3, 2/3
    assert pruner.share == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    with torch.no_grad():
        pruner.k["a"].copy_(torch.tensor([1.0, 0.4, 1.0]))    # p = 1, 1, .4, .4 -> N = 2
        pruner.k["b"].copy_(torch.tensor([0.3, 1.0, 1.0]))    # p = 1, .3, .3, .3 -> N = 1
    assert pruner.kept() == {"a": 2, "b": 1}
    subs, cost = pruner.masked_weights()
    assert float(cost.detach()) == pytest.approx((1 / 3) * 2 / 4 + (2 / 3) * 1 / 4)   # Eq. 5 / sum C
    assert pruner.fraction() == pytest.approx(float(cost.detach()))
    # the masked weight keeps the N largest of each group (Eq. 2)
    np.testing.assert_array_equal(subs["a.weight"].detach().numpy() != 0,
                                  nm_common.nm_mask(net.a.weight.detach(), 2, 4).numpy()
                                  & (net.a.weight.detach().numpy() != 0))
    # STE: d cost / d p_i = share / M for every unit, kept or not
    (gk,) = torch.autograd.grad(cost, pruner.k["b"])
    # p = (1, k1, k1 k2, k1 k2 k3), k = (.3, 1, 1): d sum p / dk = (1 + k2 + k2 k3, k1 + k1 k3, k1 k2)
    expected = torch.tensor([3.0, 0.6, 0.3]) * (2 / 3) / 4
    torch.testing.assert_close(gk, expected.float())
    # Eq. 7: alpha = 1.1 when the pruned fraction changed by <= T = 0.1
    assert sls_search.lambda_update(1.0, 0.05) == pytest.approx(1.1)
    assert sls_search.lambda_update(1.0, 0.1) == pytest.approx(1.1)
    assert sls_search.lambda_update(1.0, 0.2) == 1.0
    assert sls_search.lambda_update(2.0, 0.0, alpha=1.5, threshold=0.0) == 3.0


def test_budget_check_refuses_unreachable():
    costs = {"a": 1.0, "b": 3.0}
    sls_search.check_budget(1 / 32, 32, costs)
    with pytest.raises(NMError, match="below the reachable minimum 0.03125"):
        sls_search.check_budget(0.03, 32, costs)
    with pytest.raises(NMError, match="prunes nothing"):
        sls_search.check_budget(1.0, 32, costs)
    with pytest.raises(NMError, match="M=12"):
        sls_search.check_budget(0.5, 12, costs)


def test_fit_to_budget_gives_back_highest_priority_units():
    net = _Toy()
    pruner = sls_search.SLSPruner(net, {"a": net.a, "b": net.b}, 4)
    with torch.no_grad():
        pruner.k["a"].copy_(torch.tensor([0.45, 1.0, 1.0]))   # N = 1, next unit p = .45
        pruner.k["b"].copy_(torch.tensor([0.2, 1.0, 1.0]))    # N = 1, next unit p = .2
    kept, dropped, given = pruner.fit_to_budget(0.5)
    # 1/3 * 1/4 + 2/3 * 1/4 = .25; give back to 'a' first (higher p), then 'b' while it fits
    assert dropped == 0 and given >= 1
    assert pruner.fraction(kept) <= 0.5 + 1e-12
    assert kept["a"] >= 2
    with torch.no_grad():
        pruner.k["a"].fill_(1.0)
        pruner.k["b"].fill_(1.0)
    kept, dropped, given = pruner.fit_to_budget(0.5)
    assert dropped > 0 and pruner.fraction(kept) <= 0.5 + 1e-12


def test_tiny_search_reaches_its_budget():
    torch.manual_seed(0)
    teacher, net = _Toy(), _Toy()
    net.load_state_dict(teacher.state_dict())
    pruner = sls_search.SLSPruner(net, {"a": net.a, "b": net.b}, 8)
    x = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        y = teacher(x)
    from torch.func import functional_call

    def task(subs):
        return (functional_call(net, subs, (x,)) - y).abs().mean()

    result = sls_search.search(pruner, task, 0.3, max_steps=400, lr_scores=0.02,
                               lambda_init=0.05, anneal_every=5, rerank_every=10,
                               log=lambda s: None)
    assert result["reached"], result["history"][-1]
    assert result["fraction"] <= 0.3 + 1e-12
    assert sum(result["n"][n] * pruner.share[n] for n in result["n"]) / 8 == pytest.approx(result["fraction"])
    for name, conv in pruner.convs.items():
        p = pruner.priorities(name).detach()
        assert torch.all(p[1:] <= p[:-1]) and torch.all(pruner.k[name] >= 0)


# -- real SMSR -----------------------------------------------------------------------

def _run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)


@pytest.mark.parametrize("extra,msg", [
    (["--n", "5", "--m", "4"], "N=5 > M=4"),
    (["--n", "0", "--m", "4"], "N must be at least 1"),
    (["--n", "2", "--m", "6"], "M=6 is not supported"),
    (["--n", "2", "--m", "4", "--layers", r"^head\.0$"], "head.0 has 3 input channels"),
])
def test_nm_prune_cli_refuses(smsr_checkpoint, tmp_path, extra, msg):
    out = tmp_path / "x.pt"
    r = _run(REPO / "tools" / "nm_prune.py", smsr_checkpoint, "-o", out, *extra)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert not out.exists()


def test_sls_cli_refuses_unreachable_budget(smsr_checkpoint, tmp_path):
    r = _run(REPO / "tools" / "sls_search.py", smsr_checkpoint, "-o", tmp_path / "x.pt",
             "--budget", "0.02", "--m", "32")
    assert r.returncode != 0 and "below the reachable minimum 0.03125" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def nm_checkpoint(smsr_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("nm") / "smsr_2of4.pt"
    report = out.with_suffix(".json")
    r = _run(REPO / "tools" / "nm_prune.py", smsr_checkpoint, "-o", out, "--n", "2", "--m", "4",
             "--all-eligible", "--json", report)
    assert r.returncode == 0, r.stderr
    return out, json.loads(report.read_text())


def test_nm_checkpoint_of_real_smsr_satisfies_nm(nm_checkpoint):
    from sparsr import checkpoint
    path, report = nm_checkpoint
    model, tensors, _ = checkpoint.load(path)
    tensors = checkpoint.decode_sparse(tensors)
    nm_layers = {n for n, v in model["layers"].items() if v.get("format") == "nm"}
    assert len(nm_layers) > 20 and set(_core(nm_layers)) == set(
        _core(list(report["layers"]) + list(report["left_dense"])))
    for name in nm_layers:
        opts = model["layers"][name]["options"]
        assert opts == {"n": 2, "m": 4}
        w = tensors[name + ".weight"]
        assert nm_common.satisfies_nm(w, 2, 4), name
        assert np.count_nonzero(w) > 0.45 * w.size     # ~half kept, not wiped
    assert "head.0" in report["left_dense"]            # 3 input channels
    assert "head.0" not in model["layers"] or model["layers"]["head.0"].get("format") != "nm"


@pytest.fixture(scope="module")
def nm_core_checkpoint(smsr_checkpoint, tmp_path_factory):
    """The default target: the 20 core 3x3 convs at 2:4."""
    out = tmp_path_factory.mktemp("nm") / "smsr_core_2of4.pt"
    r = _run(REPO / "tools" / "nm_prune.py", smsr_checkpoint, "-o", out, "--n", "2", "--m", "4")
    assert r.returncode == 0, r.stderr
    return out


def test_nm_core_checkpoint_marks_exactly_the_core_layers(nm_core_checkpoint):
    from sparsr import checkpoint
    model, tensors, _ = checkpoint.load(nm_core_checkpoint)
    tensors = checkpoint.decode_sparse(tensors)
    nm_layers = sorted(n for n, v in model["layers"].items() if v.get("format") == "nm")
    assert nm_layers == _core(nm_layers) and len(nm_layers) == 20
    for name in nm_layers:
        assert nm_common.satisfies_nm(tensors[name + ".weight"], 2, 4), name


def test_nm_checkpoint_loads_in_sparsr_and_matches_torch(nm_core_checkpoint, shared_dir):
    import sparsr
    if not nm_common.nm_kernels_available():
        pytest.skip("the engine has no 'nm' kernel yet (N:M kernels not merged)")
    path = nm_core_checkpoint
    net = sparsr.load(path)
    lr = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        shared_dir / "data" / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png").convert("RGB"))[:40, :48]
    lr = np.ascontiguousarray(lr)
    ours = net.forward(lr, mode="mask").output
    ref = nm_common.torch_upscaler(nm_common.GraphModule.from_checkpoint(path).eval())(lr)
    assert np.abs(np.asarray(ours, np.float32) - ref).max() <= 1e-2


def _butterfly_crop(shared_dir):
    from PIL import Image
    with Image.open(shared_dir / "data" / "Set5" / "LR_bicubic" / "X2" / "butterflyx2.png") as im:
        return np.ascontiguousarray(np.asarray(im.convert("RGB"))[:40, :48])


def test_all_eligible_nm_checkpoint_matches_torch(nm_checkpoint, shared_dir):
    """N:M collect convs too: at unimportant pixels the collect runs as a zero-skip
    conv over the layers' dense channels (input skip), which must not change the image."""
    import sparsr
    if not nm_common.nm_kernels_available():
        pytest.skip("the engine has no 'nm' kernel")
    path, _ = nm_checkpoint
    net = sparsr.load(path)
    module = smsr_modules(net)[0]
    # At unimportant pixels the N:M collect reads the dense channels only, as a zero-skip conv.
    assert module.collect_natural and module.unimportant_collect.format != "nm"
    assert module.unimportant_collect.cin == sum(module.n_dense)
    assert all(u is not None for u in module.unimportant_layers[1:])
    lr = _butterfly_crop(shared_dir)
    fwd = net.forward(lr, mode="mask")
    assert 0 < sum(m.sum() for m in fwd.masks) < sum(m.size for m in fwd.masks)
    ref = nm_common.torch_upscaler(nm_common.GraphModule.from_checkpoint(path).eval())(lr)
    assert np.abs(np.asarray(fwd.output, np.float32) - ref).max() <= 1e-2


def test_all_eligible_nm_checkpoint_without_input_skip_matches_torch(nm_checkpoint, shared_dir,
                                                                     tmp_path):
    """The same N:M model without input skip (every channel read, the sparse ones
    as zeros, in the N:M layers' own channel order): the same image."""
    import sparsr
    from sparsr import checkpoint
    if not nm_common.nm_kernels_available():
        pytest.skip("the engine has no 'nm' kernel")
    path, _ = nm_checkpoint
    model, tensors, metadata = checkpoint.load(path)
    no_skip = tmp_path / "no_skip.pt"
    checkpoint.save(no_skip, with_input_skip(model, False), tensors, metadata)
    net = sparsr.load(no_skip)
    module = smsr_modules(net)[0]
    assert module.collect_natural and module.unimportant_collect.format == "nm"
    assert module.unimportant_collect.cin == 4 * module.channels
    lr = _butterfly_crop(shared_dir)
    fwd = net.forward(lr, mode="mask")
    ref = nm_common.torch_upscaler(nm_common.GraphModule.from_checkpoint(path).eval())(lr)
    assert np.abs(np.asarray(fwd.output, np.float32) - ref).max() <= 1e-2
    skip = sparsr.load(path).forward(lr, mode="mask")
    assert fwd.macs > skip.macs     # the zeros are multiplied, not skipped


def test_nm_core_model_counts_macs_against_the_same_dense_layers(nm_core_checkpoint,
                                                                 smsr_checkpoint, shared_dir):
    """The first SMM of the core N:M model sees SMSR's input, so it has SMSR's
    mask: its dense MACs per layer are SMSR's, and its executed MACs in the core
    layers are below SMSR's (weight skip at important pixels, weight and input
    skip at unimportant ones)."""
    import sparsr
    if not nm_common.nm_kernels_available():
        pytest.skip("the engine has no 'nm' kernel")
    lr = _butterfly_crop(shared_dir)
    base = sparsr.load(smsr_checkpoint).forward(lr, mode="mask")
    nm = sparsr.load(nm_core_checkpoint).forward(lr, mode="mask")
    np.testing.assert_array_equal(base.masks[0], nm.masks[0])
    first = [name for name in base.layers if name.startswith("body.0.")]
    core = _core(first)
    assert len(core) == 4
    for name in first:
        assert nm.layers[name].dense_macs == base.layers[name].dense_macs, name
    for name in core:
        assert nm.layers[name].macs < base.layers[name].macs, name
