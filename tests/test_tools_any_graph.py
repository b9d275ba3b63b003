"""The sparsity tools on any sparsr model: tiny CARN-M-like (group convs),
RFDN-like (ESA; 10 and 5 channels, which M = 4 does not divide) and SMSR graphs
from random weights, with a tiny data set made here. Restarts at any node, every
packed conv in every format, and each tool end to end (small and fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="the tools need torch")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from archs import tiny  # noqa: E402
import nm_common  # noqa: E402
import sparsity_common as sc  # noqa: E402
from torch_graph import GraphModule  # noqa: E402

import sparsr  # noqa: E402
from sparsr import checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """An EDSR-layout data set of 3 images: HR 64x72, LR x2 by PIL bicubic."""
    base = tmp_path_factory.mktemp("data") / "Tiny"
    (base / "HR").mkdir(parents=True)
    (base / "LR_bicubic" / "X2").mkdir(parents=True)
    for i in range(3):
        hr = tiny.image(10 + i, 64, 72)
        Image.fromarray(hr).save(base / "HR" / f"img{i}.png")
        Image.fromarray(hr).resize((36, 32), Image.BICUBIC).save(
            base / "LR_bicubic" / "X2" / f"img{i}x2.png")
    return base


@pytest.fixture(scope="module", params=tiny.TINY)
def tiny_path(request, tmp_path_factory):
    return tiny.save(request.param, tmp_path_factory.mktemp("tiny") / f"{request.param}.pt")


def _run(*args):
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _close(a, b, tol=2e-3):
    scale = max(1.0, float(np.abs(b).max()) / 100)
    assert np.abs(np.asarray(a, np.float32) - b).max() <= tol * scale


# -- the graph's layers and restarts ---------------------------------------------------

def test_core_layers_are_found_from_the_graph(tiny_path):
    m = sparsr.load(tiny_path)
    table = sc.conv_table(m)
    core = sc.core_layers(m)
    assert core and all(table[c].core and table[c].shape[2] == 3 for c in core)
    name = m.metadata["tiny"]
    if name == "smsr":
        assert core == [f"body.{k}.body.body.{i}" for k in range(2) for i in range(4)]
    elif name == "rfdn":
        assert core == [f"B{i}.{c}" for i in (1, 2) for c in ("c1_r", "c2_r", "c3_r", "c4")] \
            + ["LR_conv"]   # not fea_conv (the image), the upsampler, nor the attention convs
        assert not table["B1.esa.conv2"].packed          # stride 2: the general conv
        assert table["B1.esa.conv2"].formats == ("dense", "sparse")
    else:
        assert core == [f"b{i}.b1.body.{j}" for i in (1, 2, 3) for j in (0, 2)]
        assert table["b1.b1.body.0"].groups == 4


def test_restarting_at_any_layer_gives_the_full_run(tiny_path):
    m = sparsr.load(tiny_path)
    img = tiny.image(5)
    layers = list(sc.conv_table(m))
    nodes = sc.restart_nodes(m, layers, limit=6)
    assert 1 < len(nodes) <= 6
    stages = m.stages(img, nodes)
    rng = np.random.default_rng(0)
    for name in layers[1::3]:
        original = m.conv_weight(name).copy()
        m.set_conv_weight(name, original * rng.uniform(0.5, 1.5, original.shape).astype(np.float32))
        start = sc.restart_of(m, name, nodes)
        again = m.forward(img, cache=stages, start=start)
        full = m.forward(img)
        np.testing.assert_array_equal(again.output, full.output)
        m.set_conv_weight(name, original)


def test_every_packed_conv_takes_every_format(tiny_path):
    """dense, csr, nm and sparse (the engine's choice by its measured cost model) on every
    packed conv of the graph compute the same image; the general convs take dense and sparse."""
    m = sparsr.load(tiny_path)
    table = sc.conv_table(m)
    nm = {n: nm_common.nm_prune(m.conv_weight(n), 2, 4) for n, c in table.items()
          if c.packed and nm_common.nm_eligible(c.shape, 4)}
    m.replace_weights({n + ".weight": w for n, w in nm.items()})
    img = tiny.image(6)
    want = m.forward(img).output
    for fmt in ("csr", "nm", "sparse", "dense"):
        formats = {n: ({"format": "nm", "options": {"n": 2, "m": 4}} if fmt == "nm" else fmt)
                   for n in nm}
        formats.update({n: "sparse" for n, c in table.items() if not c.packed})
        m.replace_weights({}, formats=formats)
        rows = {r["name"].split("[")[0]: r for r in m.layer_table()}
        if fmt in ("csr", "nm"):
            assert all(rows[n]["format"] == fmt for n in nm), fmt
        _close(m.forward(img).output, want)


# -- the tools end to end ----------------------------------------------------------------

def test_sensitivity_and_allocate(tiny_path, tiny_data, tmp_path):
    m = sparsr.load(tiny_path)
    core = sc.core_layers(m)
    sens = tmp_path / "sens.json"
    _run(REPO / "tools" / "sensitivity.py", tiny_path, "-o", sens, "--calib", tiny_data,
         "--calib-count", "2", "--crop", "0", "--resolution", "64", "--deltas", "0.3",
         "--max-restarts", "4")
    report = json.loads(sens.read_text())
    assert report["layers_order"] == core and len(report["restarts"]) <= 4
    assert report["architecture"] == m.architecture
    for name in core:
        k = report["layers"][name]["k_best"]["0.3"]
        assert 0 <= k < m.conv_weight(name).size
    for how in (["--sensitivity", sens, "--delta", "0.3"], ["--uniform"]):
        out = tmp_path / f"alloc{len(how)}.pt"
        _run(REPO / "tools" / "allocate.py", tiny_path, "-o", out, "--target", "0.3", *how)
        sparse = sparsr.load(out)
        zeros = sum(sparse.conv_weight(n).size - np.count_nonzero(sparse.conv_weight(n))
                    for n in core)
        total = sum(sparse.conv_weight(n).size for n in core)
        assert abs(zeros / total - 0.3) < 1e-3
        assert all(sparse.description["layers"][n]["format"] == "sparse" for n in core)
        sparse.forward(tiny.image(1))


def test_nm_prune_all_eligible_and_finetune(tiny_path, tiny_data, tmp_path):
    out, report_path = tmp_path / "nm.pt", tmp_path / "nm.json"
    _run(REPO / "tools" / "nm_prune.py", tiny_path, "-o", out, "--n", "2", "--m", "4",
         "--all-eligible", "--json", report_path, "--finetune-steps", "2", "--batch", "2",
         "--patch", "16", "--train-data", tiny_data)
    report = json.loads(report_path.read_text())
    m = sparsr.load(out)
    table = sc.conv_table(m)
    want = {n for n, c in table.items() if c.packed and c.shape[1] >= 4}
    assert set(report["layers"]) == want
    assert set(report["left_dense"]) == set(table) - want
    assert report["finetune"]["steps"] == 2
    for row in m.layer_table():
        if row["name"].split("[")[0] in want:
            assert row["format"] == "nm" and row["kernel"].startswith("conv")
    for n in want:
        assert nm_common.satisfies_nm(m.conv_weight(n), 2, 4), n
    # Every 3x3 conv the packed kernels run is N:M (the first reads 3 channels).
    threes = {n for n, c in table.items() if c.packed and c.shape[2] == 3 and c.shape[1] >= 4}
    assert threes <= want
    img = tiny.image(2)
    ref = GraphModule.from_checkpoint(out).upscaler()(img)
    _close(m.forward(img).output, ref)


def test_sls_search_writes_per_layer_n(tiny_path, tiny_data, tmp_path):
    out, report_path = tmp_path / "sls.pt", tmp_path / "sls.json"
    _run(REPO / "tools" / "sls_search.py", tiny_path, "-o", out, "--budget", "0.5", "--m", "4",
         "--search-steps", "3", "--finetune-steps", "1", "--batch", "2", "--patch", "16",
         "--train-data", tiny_data, "--json", report_path)
    report = json.loads(report_path.read_text())
    m = sparsr.load(out)
    core = sc.core_layers(m)
    assert set(report["layers"]) == set(core)
    assert report["search"]["fraction"] <= 0.5 + 1e-9
    for n, kept in report["layers"].items():
        assert 1 <= kept <= 4 and nm_common.satisfies_nm(m.conv_weight(n), kept, 4)
        assert m.description["layers"][n] == {"format": "nm", "options": {"n": kept, "m": 4}}
    m.forward(tiny.image(3))


def test_evaluate_engine_and_torch_agree(tiny_path, tiny_data, tmp_path):
    rows = {}
    for flag in ("--model", "--torch"):
        js = tmp_path / f"{flag[2:]}.json"
        _run(REPO / "tools" / "evaluate.py", flag, tiny_path, "--data", tiny_data,
             "--json", js)
        rows[flag] = json.loads(js.read_text())["datasets"][0]
    assert rows["--model"]["psnr"] == pytest.approx(rows["--torch"]["psnr"], abs=0.02)


def test_compare_models_counts_fewer_macs_for_pruned_layers(tiny_path, tiny_data, tmp_path):
    pruned, js = tmp_path / "nm.pt", tmp_path / "cmp.json"
    _run(REPO / "tools" / "nm_prune.py", tiny_path, "-o", pruned, "--n", "1", "--m", "4")
    r = _run(REPO / "tools" / "compare_models.py", "--base", tiny_path, "--model",
             f"1:4={pruned}", "--sets", tiny_data, "--output-size", "48", "56", "--image",
             tiny_data / "HR" / "img0.png", "--repeats", "2", "--json", js)
    rows = json.loads(js.read_text())["rows"]
    assert [row["label"] for row in rows] == ["dense", "1:4"] and "| 1:4 |" in r.stdout
    assert rows[1]["executed_gmacs"] < rows[0]["executed_gmacs"] <= rows[0]["dense_gmacs"]
    assert rows[0]["time_ratio"] == 1.0 and rows[1]["seconds"] > 0
    assert set(rows[1]["sets"]) == {"Tiny"}


def test_no_tool_imports_an_architecture_module():
    """The sparsity tools read graphs, not networks: none imports a hand-written PyTorch
    twin (compare_torch.py and onnx_roundtrip.py check importers against the original
    networks, and so import them)."""
    tools = ["sensitivity", "allocate", "nm_prune", "sls_search", "evaluate", "sparsity_tables",
             "nm_tables", "sparsity_common", "nm_common", "make_sparsmsr", "torch_graph",
             "compare_models"]
    for name in tools:
        path = REPO / "tools" / f"{name}.py"
        text = path.read_text()
        for module in ("torch_smsr", "smsr_reference", "archs."):
            assert f"import {module}" not in text and f"from {module}" not in text, \
                f"{path.name} imports {module}"
