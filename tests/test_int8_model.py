"""int8 in a model: the calibration a checkpoint's layers carry (round trip,
bad or missing data refused with the layer named), sparsr.load(precision=
"int8") running int8 where calibrated and reporting the rest, SMSR's module
convs in int8, f32 unchanged, the fallback below AVX512_VNNI, and
tools/quantize.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import sparsr
from conftest import REPO, dataset_pairs
from sparsr import _core, checkpoint
from sparsr.errors import CheckpointError

sys.path.insert(0, str(REPO / "tools"))
import quantize as quantize_tool  # noqa: E402

HAS_INT8 = _core.isa_supported("avx512bf16")
NO_INT8 = "this CPU lacks AVX512_VNNI: int8 requests run f32 kernels here"


@pytest.fixture(scope="module")
def lr(shared_dir):
    _, image, _ = next(dataset_pairs(shared_dir, "Set5", 2))
    return image[:48, :72]


def _with_layers(src, dst, layers):
    description, tensors, metadata = checkpoint.load(src)
    merged = {k: dict(v) for k, v in description.get("layers", {}).items()}
    for name, entry in layers.items():
        merged.setdefault(name, {}).update(entry)
    checkpoint.save(dst, dict(description, layers=merged), tensors, metadata)
    return dst


@pytest.fixture(scope="module")
def calibrated(smsr_checkpoint, lr, tmp_path_factory):
    """The SMSR checkpoint with every fast conv's input calibrated on one patch."""
    model = sparsr.load(smsr_checkpoint, precision="f32")
    observer = quantize_tool.calibrate(model, [lr], "mask")
    quant = {n: observer.quant(n, "max") for n in observer.low}
    path = tmp_path_factory.mktemp("int8") / "calibrated.pt"
    return _with_layers(smsr_checkpoint, path, {n: {"int8": q} for n, q in quant.items()}), quant


def test_calibration_round_trips(calibrated):
    path, quant = calibrated
    description, _, _ = checkpoint.load(path)
    assert {n: description["layers"][n]["int8"] for n in quant} == quant
    assert {q["zero_point"] for q in quant.values()} == {0, 128}   # ReLU outputs and others
    m = sparsr.load(path)                 # auto: no layer chose int8
    assert m.info()["int8_layers"] == 0


def test_int8_load_runs_calibrated_layers_close_to_f32(calibrated, smsr_checkpoint, lr):
    if not HAS_INT8:
        pytest.skip(NO_INT8)
    path, quant = calibrated
    m = sparsr.load(path, precision="int8")
    info = m.info()
    dense = [r for r in info["layers"] if r["kernel"] != "conv-general"]
    assert info["int8_layers"] == len(dense) > 0 and "precision_note" not in info
    assert all(r["precision"] == "int8" and "int8" in r["kernel"] for r in dense)
    # The module convs of SMSR (run on masks inside smsr_module) are int8 too.
    assert any(r["name"].endswith("body.body.1") and r["precision"] == "int8" for r in dense)
    f32 = sparsr.load(smsr_checkpoint, precision="f32")
    for mode in ("dense", "mask"):
        a, b = f32.forward(lr, mode).output, m.forward(lr, mode).output
        assert 0 < np.abs(a - b).max() < 20.0
        assert 10 * np.log10(255 ** 2 / np.mean((a - b) ** 2)) > 35


def test_f32_of_a_calibrated_checkpoint_is_unchanged(calibrated, smsr_checkpoint, lr):
    path, _ = calibrated
    before = sparsr.load(smsr_checkpoint, precision="f32").forward(lr, "mask").output
    for precision in ("f32", "auto"):
        m = sparsr.load(path, precision=precision)
        assert m.info()["int8_layers"] == 0
        np.testing.assert_array_equal(m.forward(lr, "mask").output, before)


def test_per_layer_int8_choice(calibrated):
    if not HAS_INT8:
        pytest.skip(NO_INT8)
    path, _ = calibrated
    layer = "body.1.body.body.2"
    one = _with_layers(path, path.with_name("one.pt"), {layer: {"precision": "int8"}})
    rows = {r["name"]: r["precision"] for r in sparsr.load(one).layer_table()}
    assert rows[layer] == "int8" and sum(p == "int8" for p in rows.values()) == 1
    # precision="int8": the calibrated ones; a bf16 choice elsewhere is kept.
    part = _with_layers(one, path.with_name("part.pt"),
                        {"head.2": {"precision": "bf16"}})
    description, tensors, metadata = checkpoint.load(part)
    del description["layers"]["head.2"]["int8"]
    checkpoint.save(part, description, tensors, metadata)
    info = sparsr.load(part, precision="int8").info()
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["head.2"]["requested_precision"] == "bf16"
    assert info["int8_uncalibrated"] == ["head.2"] and "head.2" in info["precision_note"]


def test_int8_without_calibration_falls_back_and_says_so(smsr_checkpoint, lr):
    m = sparsr.load(smsr_checkpoint, precision="int8")
    info = m.info()
    assert info["int8_layers"] == 0
    assert "have no int8 calibration" in info["precision_note"]
    assert len(info["int8_uncalibrated"]) == len({r["name"] for r in info["layers"]})
    f32 = sparsr.load(smsr_checkpoint, precision="f32")
    np.testing.assert_array_equal(m.forward(lr, "dense").output, f32.forward(lr, "dense").output)


@pytest.mark.parametrize("entry, message", [
    ({"precision": "int8"}, r"precision is 'int8' but the layer has no 'int8' calibration"),
    ({"int8": {"scale": -1.0, "zero_point": 0}}, r"int8.scale must be a positive finite"),
    ({"int8": {"scale": "0.1", "zero_point": 0}}, r"int8.scale must be a positive finite"),
    ({"int8": {"scale": 1e300, "zero_point": 0}}, r"int8.scale must be a positive"),
    ({"int8": {"scale": 0, "zero_point": 0}}, r"int8.scale must be a positive"),
    ({"int8": {"scale": 0.1, "zero_point": 64}}, r"int8.zero_point must be one of \(0, 128\)"),
    ({"int8": {"scale": 0.1}}, r"int8.zero_point must be one of"),
    ({"int8": [0.1, 0]}, r"int8 must be an object with 'scale' and 'zero_point'"),
], ids=["missing", "negative", "string", "huge", "zero", "zero-point", "no-zero-point", "list"])
def test_bad_calibration_is_refused(smsr_checkpoint, tmp_path, entry, message):
    path = _with_layers(smsr_checkpoint, tmp_path / "bad.pt", {"head.2": entry})
    with pytest.raises(CheckpointError, match=r"layers\['head.2'\]." + message):
        sparsr.load(path, precision="f32")


_RUN = """
import sys, json, numpy as np, sparsr
m = sparsr.load(sys.argv[1], precision="int8")
info = m.info()
print(json.dumps({"int8_layers": info["int8_layers"], "note": info.get("precision_note", ""),
                  "kernels": [r["kernel"] for r in info["layers"]]}))
"""


@pytest.mark.parametrize("level", ["scalar", "avx512"])
def test_int8_at_forced_levels(calibrated, level):
    """scalar runs the int8 twins; avx512 (no AVX512_VNNI) the f32 kernels, and says so."""
    path, _ = calibrated
    if not _core.isa_supported(level):
        pytest.skip(f"this CPU lacks {level}")
    r = subprocess.run([sys.executable, "-c", _RUN, str(path)], capture_output=True, text=True,
                       check=True, env=dict(os.environ, SPARSR_ISA=level))
    report = json.loads(r.stdout.strip().splitlines()[-1])
    if level == "scalar":
        assert report["int8_layers"] > 0 and report["note"] == ""
    else:
        assert report["int8_layers"] == 0
        assert "level avx512 has no AVX512_VNNI" in report["note"]
        assert not any("int8" in k for k in report["kernels"])


# -- tools/quantize.py ----------------------------------------------------------------

def test_observer_zero_points_and_clips():
    obs = quantize_tool.Observer()
    obs.observe("relu", np.array([0.0, 0.5, 2.0, 1.0], np.float32))
    obs.observe("signed", np.array([-3.0, 0.5, 1.0], np.float32))
    assert obs.quant("relu", "max") == {"scale": 2.0 / 255, "zero_point": 0}
    assert obs.quant("signed", "max") == {"scale": 3.0 / 127, "zero_point": 128}
    many = quantize_tool.Observer()
    many.observe("x", np.concatenate([np.ones(9999, np.float32), [100.0]]).astype(np.float32))
    assert many.quant("x", "p99.9")["scale"] == pytest.approx(1.0 / 255)
    assert many.quant("x", "max")["scale"] == pytest.approx(100.0 / 255)


def test_quantize_tool_writes_a_checkpoint(smsr_checkpoint, tmp_path):
    if not HAS_INT8:
        pytest.skip(NO_INT8)
    out, js = tmp_path / "int8.pt", tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "quantize.py"),
                        str(smsr_checkpoint), "-o", str(out), "--data", "Set5", "--images", "1",
                        "--patches", "2", "--patch", "48", "--clip", "max", "--tolerance", "0.05",
                        "--json", str(js)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(js.read_text())
    assert report["loss_db"] <= 0.05
    m = sparsr.load(out)
    rows = {r["name"]: r["precision"] for r in m.layer_table()}
    for name, p in report["layers"].items():
        assert rows[name] == p
    assert m.metadata["int8"]["int8_layers"] == sum(p == "int8" for p in report["layers"].values())
    assert m.metadata["int8"]["calibration"] == "B100"


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def layer_table(self):
        return self.rows


class FakeScorer:
    """Layer losses that add up (dB) on two datasets, scaled by the clip's
    factor; "c" is a 1x1 and "d" has no int8 kernel."""
    mode = "mask"
    data = {"A": [0], "B": [0, 0]}
    losses = {"a": (0.004, 0.001), "b": (0.0, 0.002), "c": (0.001, 0.001), "d": (0.5, 0.5),
              "e": (0.03, 0.03), "f": (0.02, 0.0)}

    def __init__(self):
        self.evaluations = 0
        self.quant = {}

    def model(self, chosen, names):
        return _Rows([{"name": n, "shape": [8, 8, 1 if n == "c" else 3, 3],
                       "precision": "int8" if n in chosen and n != "d" else "f32"}
                      for n in self.losses])

    def score(self, chosen, names):
        self.evaluations += 1
        factor = {n: q["scale"] for n, q in self.quant.items()}
        return {d: 30.0 - sum(self.losses[n][i] * factor.get(n, 1.0) for n in chosen)
                for i, d in enumerate(self.data)}


class FakeObserver:
    low = {n: 0.0 for n in FakeScorer.losses}

    def quant(self, name, clip):
        return {"scale": {"max": 2.0, "p99.99": 1.0}[clip], "zero_point": 0}


def test_quantize_choice_drops_the_most_sensitive_layers_first():
    report = quantize_tool.choose(FakeScorer(), FakeObserver(), ["max", "p99.99"], 0.01,
                                  ksizes=(3,), log=lambda *_: None)
    assert report["clip"] == "p99.99"          # half the loss of "max"
    # Candidates a, b, e, f (c is a 1x1, d has no int8 kernel). Alone: b 0.002,
    # a 0.004, f 0.02, e 0.03: e and f fall back (a + b lose 0.004 and 0.003).
    assert report["layers"] == {"a": "int8", "b": "int8", "e": "f32", "f": "f32"}
    assert report["loss_db"] == pytest.approx(0.004)
    with_1x1 = quantize_tool.choose(FakeScorer(), FakeObserver(), ["max"], 1.0,
                                    log=lambda *_: None)   # default: 1x1s and 3x3s
    assert set(with_1x1["layers"]) == {"a", "b", "c", "e", "f"}
    assert set(with_1x1["layers"].values()) == {"int8"}
