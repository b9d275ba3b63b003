"""Precision selection: sparsr.load(precision=...), the per-layer choice in a
checkpoint's layers, the fallback to f32 below the bf16 levels, and
tools/precision.py. f32 stays what it was: bit-identical to the f32 kernels
of the avx512 level, the level these CPUs ran before the bf16 ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sparsr
from conftest import REPO, dataset_pairs
from sparsr import _core, checkpoint, cli
from sparsr.errors import CheckpointError

HAS_BF16 = _core.isa_supported("avx512bf16")
NO_BF16 = "this CPU lacks AVX512_BF16 and AMX-BF16: bf16 requests run f32 kernels here"


@pytest.fixture(scope="module")
def lr(shared_dir):
    _, image, _ = next(dataset_pairs(shared_dir, "Set5", 2))
    return image[:48, :72]


_RUN = """
import sys, json, numpy as np, sparsr
path, image, precision, out = sys.argv[1:]
m = sparsr.load(path, precision=precision)
info = m.info()
np.save(out, m.forward(np.load(image), "dense").output)
print(json.dumps({"kernels": [r["kernel"] for r in info["layers"]],
                  "bf16_layers": info["bf16_layers"], "note": info.get("precision_note", "")}))
"""


def _run_at(level, path, image, precision, tmp_path):
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / f"{level}-{precision}.npy"
    r = subprocess.run([sys.executable, "-c", _RUN, str(path), str(tmp_path / "image.npy"),
                        precision, str(out)], capture_output=True, text=True, check=True,
                       env=dict(os.environ, SPARSR_ISA=level))
    return np.load(out), json.loads(r.stdout.strip().splitlines()[-1])


def test_f32_is_the_f32_kernels_of_before(smsr_checkpoint, lr, tmp_path):
    """precision="f32" (and "auto" on a checkpoint without choices) runs the
    same kernels and gives the same bits as the avx512 level, where no bf16
    kernel exists: the path every image took before bf16."""
    if not _core.isa_supported("avx512"):
        pytest.skip("this CPU lacks avx512")
    before, report = _run_at("avx512", smsr_checkpoint, lr, "f32", tmp_path)
    for precision in ("f32", "auto"):
        m = sparsr.load(smsr_checkpoint, precision=precision)
        assert [r["kernel"] for r in m.info()["layers"]] == report["kernels"]
        assert m.info()["bf16_layers"] == 0
        np.testing.assert_array_equal(m.forward(lr, "dense").output, before)


def test_bf16_below_its_levels_runs_f32_and_says_so(smsr_checkpoint, lr, tmp_path):
    if not _core.isa_supported("avx512"):
        pytest.skip("this CPU lacks avx512")
    f32, _ = _run_at("avx512", smsr_checkpoint, lr, "f32", tmp_path)
    got, report = _run_at("avx512", smsr_checkpoint, lr, "bf16", tmp_path)
    assert report["bf16_layers"] == 0
    assert "level avx512 has no AVX512_BF16" in report["note"]
    np.testing.assert_array_equal(got, f32)


def test_bf16_model_is_close_to_f32(smsr_checkpoint, lr):
    if not HAS_BF16:
        pytest.skip(NO_BF16)
    f32 = sparsr.load(smsr_checkpoint, precision="f32")
    bf16 = sparsr.load(smsr_checkpoint, precision="bf16")
    info = bf16.info()
    dense = [r for r in info["layers"] if r["kernel"] != "conv-general" and r["format"] == "dense"]
    assert info["bf16_layers"] == len(dense) > 0 and "precision_note" not in info
    assert all(r["precision"] == "bf16" and "bf16" in r["kernel"] for r in dense)
    a, b = f32.forward(lr, "dense").output, bf16.forward(lr, "dense").output
    assert 0 < np.abs(a - b).max() < 4.0               # on 0..255
    assert 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2)) > 45


def _with_layers(src, dst, layers):
    description, tensors, metadata = checkpoint.load(src)
    description = dict(description, layers={**description.get("layers", {}), **layers})
    checkpoint.save(dst, description, tensors, metadata)
    return dst


def test_auto_uses_the_checkpoint_choice(smsr_checkpoint, tmp_path):
    if not HAS_BF16:
        pytest.skip(NO_BF16)
    layer = "body.1.body.body.2"
    path = _with_layers(smsr_checkpoint, tmp_path / "one.pt", {layer: {"precision": "bf16"}})
    rows = {r["name"]: r["precision"] for r in sparsr.load(path).layer_table()}
    assert rows[layer] == "bf16" and sum(p == "bf16" for p in rows.values()) == 1
    assert sparsr.load(path, precision="f32").info()["bf16_layers"] == 0
    every = sparsr.load(path, precision="bf16").info()
    assert every["bf16_layers"] == len(every["layers"])


def test_bad_precisions_are_refused(smsr_checkpoint, tmp_path):
    path = _with_layers(smsr_checkpoint, tmp_path / "bad.pt", {"head": {"precision": "fp8"}})
    with pytest.raises(CheckpointError, match=r"layers\['head'\].precision must be one of"):
        sparsr.load(path)
    with pytest.raises(ValueError, match="precision must be one of"):
        sparsr.load(smsr_checkpoint, precision="half")


def test_cli_info_precision(smsr_checkpoint, capsys):
    assert cli.main(["info", str(smsr_checkpoint), "--precision", "f32"]) == 0
    assert "precision f32 (0 layers bf16)" in capsys.readouterr().out
    assert cli.main(["info", str(smsr_checkpoint), "--precision", "bf16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision"] == "bf16" and (info["bf16_layers"] > 0) == HAS_BF16


# -- tools/precision.py ---------------------------------------------------------------

sys.path.insert(0, str(REPO / "tools"))
import precision as precision_tool  # noqa: E402


class _Rows:
    def __init__(self, names, bf16):
        self.rows = [{"name": n, "precision": "bf16" if n in bf16 else "f32"} for n in names]

    def layer_table(self):
        return self.rows


class FakeScorer:
    """Layer losses that add up (dB), on two datasets; "c" cannot run bf16."""
    mode = "dense"
    data = {"A": [0], "B": [0, 0]}
    losses = {"a": (0.004, 0.001), "b": (0.0, 0.002), "c": (0.5, 0.5), "d": (0.02, 0.0),
              "e": (0.003, 0.003)}

    def __init__(self):
        self.evaluations = 0

    def model(self, bf16, names):
        return _Rows(list(self.losses), {n for n in bf16 if n != "c"})

    def score(self, bf16, names):
        self.evaluations += 1
        return {d: 30.0 - sum(self.losses[n][i] for n in bf16) for i, d in enumerate(self.data)}


def test_precision_tool_keeps_the_longest_prefix_within_tolerance():
    report = precision_tool.choose(FakeScorer(), 0.01, log=lambda *_: None)
    # Alone: b 0.002, e 0.003, a 0.004, d 0.02 (c has no bf16 kernel). b + e + a
    # lose 0.007 on A and 0.006 on B; adding d loses 0.027 on A.
    assert report["layers"] == {"a": "bf16", "b": "bf16", "d": "f32", "e": "bf16"}
    assert report["loss_db"] == pytest.approx(0.007)
    everything = precision_tool.choose(FakeScorer(), 0.05, log=lambda *_: None)
    assert set(everything["layers"].values()) == {"bf16"} and everything["evaluations"] == 2


def test_precision_tool_writes_a_checkpoint_auto_reads(smsr_checkpoint, tmp_path):
    if not HAS_BF16:
        pytest.skip(NO_BF16)
    out, js = tmp_path / "auto.pt", tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "precision.py"), str(smsr_checkpoint),
                        "-o", str(out), "--data", "Set5", "--images", "1", "--json", str(js)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(js.read_text())
    assert report["loss_db"] <= 0.01
    rows = {r["name"]: r["precision"] for r in sparsr.load(out).layer_table()}
    for name, p in report["layers"].items():
        assert rows[name] == p
    assert sparsr.load(out).metadata["precision"]["bf16_layers"] == sum(
        p == "bf16" for p in report["layers"].values())


def test_sparse_layers_in_bf16_choose_against_the_amx_kernel():
    """A "sparse" layer runs CSR where that beats dense; in bf16 on AMX dense is
    the AMX kernel, so only a much sparser layer still runs CSR (in f32)."""
    from sparsr.ops.conv import PackedConv
    if _core.choose_kernel("dense", 3, None, "bf16")["isa"] != "amx":
        pytest.skip("no AMX bf16 kernel at this level")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    half = np.where(rng.random(w.shape) < 0.5, 0, w).astype(np.float32)
    most = np.where(rng.random(w.shape) < 0.95, 0, w).astype(np.float32)
    assert _core.csr_beneficial(half)              # CSR beats f32 dense at 50 % zeros ...
    assert PackedConv("a", half, None, None, "sparse").format == "csr"
    bf16 = PackedConv("a", half, None, None, "sparse", precision="bf16")
    assert (bf16.format, bf16.native.precision) == ("dense", "bf16")   # ... not AMX
    sparse = PackedConv("b", most, None, None, "sparse", precision="bf16")
    assert (sparse.format, sparse.native.precision) == ("csr", "f32")
