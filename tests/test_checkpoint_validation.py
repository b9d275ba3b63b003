"""Hostile checkpoints: every header field typed and bounded before anything is
allocated from it, each failure a CheckpointError naming the field, fast."""

from __future__ import annotations

import json
import struct
import time
import zlib

import numpy as np
import pytest

import sparsr
from sparsr import checkpoint
from sparsr.errors import CheckpointError
from sparsr.importers.builder import GraphBuilder
from sparsr.graph import IO


def _tiny(rng_seed: int = 0) -> tuple[dict, dict]:
    """conv 3->12, pixel shuffle x2: a valid x2 RGB graph."""
    rng = np.random.default_rng(rng_seed)
    sd = {"a.weight": rng.standard_normal((12, 3, 3, 3)).astype(np.float32) * 0.1,
          "a.bias": np.zeros(12, np.float32)}
    b = GraphBuilder(sd, IO(scale=2, range=1.0), "tiny")
    return b.finish(b.pixel_shuffle(b.conv(b.input, "a"), 2))


def _parts(path):
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 16)
    start = (24 + n + 63) // 64 * 64
    return json.loads(raw[24:24 + n]), raw[start:]


def _write(path, header_text: bytes, data: bytes) -> None:
    start = (24 + len(header_text) + 63) // 64 * 64
    path.write_bytes(struct.pack("<8sIIQ", b"SPARSRCK", 1, 0, len(header_text)) + header_text
                     + b"\0" * (start - 24 - len(header_text)) + data)


def _edited(tmp_path, edit, name="m.pt"):
    """A valid tiny checkpoint after `edit(header, data)` changed its header
    (re-serialised with NaN and Infinity allowed) or its data (a bytearray)."""
    model, tensors = _tiny()
    path = tmp_path / name
    checkpoint.save(path, model, tensors)
    header, data = _parts(path)
    data = bytearray(data)
    edit(header, data)
    _write(path, json.dumps(header).encode(), bytes(data))
    return path


def _refused(path, match: str, load=sparsr.load, seconds: float = 1.0):
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        load(path)
    assert time.perf_counter() - start < seconds


def test_the_tiny_checkpoint_loads(tmp_path):
    model = sparsr.load(_edited(tmp_path, lambda h, d: None))
    assert model.upscale(np.zeros((6, 5, 3), np.uint8)).shape == (12, 10, 3)


# -- the JSON itself -----------------------------------------------------------------

@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_is_refused_before_parsing(tmp_path, depth):
    path = tmp_path / "deep.pt"
    _write(path, b'{"metadata": ' + b"[" * depth + b"]" * depth + b"}", b"")
    _refused(path, f"nested {depth + 1} deep", checkpoint.load)


def test_nesting_at_the_limit_is_read(tmp_path):
    # The header object and "metadata" are two levels.
    inner = b"[" * (checkpoint.MAX_JSON_DEPTH - 2) + b"]" * (checkpoint.MAX_JSON_DEPTH - 2)
    path = _edited(tmp_path, lambda h, d: None)
    header, data = _parts(path)
    text = json.dumps(header).encode().replace(b'"metadata": {}', b'"metadata": {"x": ' + inner
                                               + b"}")
    _write(path, text, data)
    assert checkpoint.load(path)[2]["x"] == json.loads(inner)


@pytest.mark.parametrize("token, why", [
    (b"NaN", "NaN is not a number"), (b"-Infinity", "-Infinity is not a number"),
    (b"1e400", "1e400 overflows a double"),
    pytest.param(b"9" * 5000, "integer 9+ is outside int64", id="5000-digits"),
    (b"-9223372036854775809", "integer -9223372036854775809 is outside int64")])
def test_non_numbers_in_numeric_fields_are_refused_naming_the_field(tmp_path, token, why):
    path = _edited(tmp_path, lambda h, d: None)
    header, data = _parts(path)
    text = json.dumps(header).encode().replace(b'"range": 1.0', b'"range": ' + token)
    _write(path, text, data)
    _refused(path, f"field model.io.range: {why}")


def test_a_key_twice_is_refused(tmp_path):
    path = _edited(tmp_path, lambda h, d: None)
    header, data = _parts(path)
    text = json.dumps(header).encode().replace(b'"scale": 2', b'"scale": 2, "scale": 3')
    _write(path, text, data)
    _refused(path, "field model.io: key 'scale' appears twice")


def test_1e300_in_an_attribute_is_out_of_range(tmp_path):
    def edit(h, d):
        node = h["model"]["graph"]["nodes"][0]
        h["model"]["graph"]["nodes"].insert(1, {"op": "leaky_relu", "name": "lr",
                                                "inputs": [node["outputs"][0]],
                                                "outputs": ["lr"], "attrs": {"slope": 1e300}})
        h["model"]["graph"]["nodes"][2]["inputs"] = ["lr"]
    _refused(_edited(tmp_path, edit), r"'lr' \(leaky_relu\): attribute 'slope' must be in")


@pytest.mark.parametrize("body, message", [
    (b'{"metadata": {"x": [' + b"{}," * 600_000 + b"{}]}}", "values"),
    (b'{"metadata": "' + b"a" * (9 << 20) + b'"}', "header length"),
])
def test_huge_headers_are_refused_fast_and_small(tmp_path, body, message):
    path = tmp_path / "big.pt"
    _write(path, body, b"")
    _refused(path, message, checkpoint.load)


# -- header fields --------------------------------------------------------------------

def _entry(h):
    return h["tensors"]["a.weight"]


@pytest.mark.parametrize("edit, match", [
    (lambda h, d: h.update(data_nbytes=True), "'data_nbytes' is missing or not an integer"),
    (lambda h, d: h.update(data_nbytes=2 ** 62), "'data_nbytes' is 4611686018427387904, outside"),
    (lambda h, d: h.update(version=True), "'version'"),
    (lambda h, d: h.update(metadata=[]), "'metadata' is not an object"),
    (lambda h, d: h.update(tensors=[]), "'tensors' is missing or not an object"),
    (lambda h, d: _entry(h).update(dtype="float64"), "field 'dtype' is 'float64'"),
    (lambda h, d: _entry(h).update(dtype=None), "field 'dtype' is None"),
    (lambda h, d: _entry(h).update(shape=[12, 3, 3, True]), "field 'shape' must be a list"),
    (lambda h, d: _entry(h).update(shape=[12, 3, 3, 3.0]), "field 'shape' must be a list"),
    (lambda h, d: _entry(h).update(shape=[1] * 9), "at most 8"),
    (lambda h, d: _entry(h).update(shape=[-12, 3, 3, -3]), "negative"),
    # 2^62 * 4 elements wrap an int64 product to 0: with nbytes 0 it must not pass.
    (lambda h, d: _entry(h).update(shape=[2 ** 62, 4], nbytes=0), "larger than the file"),
    (lambda h, d: _entry(h).update(shape=[0, 2 ** 40], nbytes=0), "larger than the file"),
    (lambda h, d: _entry(h).update(offset=-1), "'offset' is -1, outside"),
    (lambda h, d: _entry(h).update(offset=1.5), "'offset' is missing or not an integer"),
    (lambda h, d: _entry(h).update(nbytes=2 ** 63 - 1), "'nbytes' is 9223372036854775807"),
    (lambda h, d: _entry(h).update(crc32=-1), "'crc32' is -1, outside"),
    (lambda h, d: _entry(h).update(crc32=2 ** 32), "'crc32' is 4294967296, outside"),
    (lambda h, d: h["tensors"].update(x=[]), "tensor 'x' has a malformed entry"),
])
def test_header_fields_are_typed_and_bounded(tmp_path, edit, match):
    _refused(_edited(tmp_path, edit), match, checkpoint.load)


def test_overlapping_tensors_are_refused(tmp_path):
    def edit(h, d):
        h["tensors"]["a.bias"]["offset"] = h["tensors"]["a.weight"]["offset"] + 64
        h["tensors"]["a.bias"]["crc32"] = zlib.crc32(bytes(d[64:64 + 48]))
    _refused(_edited(tmp_path, edit), "'a.bias' and 'a.weight' overlap|'a.weight' and 'a.bias' "
                                      "overlap", checkpoint.load)


def test_a_float_tensor_labelled_int32_is_refused_by_its_op(tmp_path):
    # The CRC still matches: the loader reads it, the conv refuses its dtype.
    _refused(_edited(tmp_path, lambda h, d: _entry(h).update(dtype="int32")),
             r"weight tensor 'a.weight' has dtype int32, expected float32")


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path):
    def edit(h, d):
        e = _entry(h)
        w = np.frombuffer(bytes(d[e["offset"]:e["offset"] + e["nbytes"]]), "<f4").copy()
        w[[0, 5]] = [np.nan, np.inf]
        d[e["offset"]:e["offset"] + e["nbytes"]] = w.tobytes()
        e["crc32"] = zlib.crc32(w.tobytes())
    path = _edited(tmp_path, edit)
    _refused(path, "holds 2 NaN or infinite values .*allow_nonfinite=True")
    model = sparsr.load(path, allow_nonfinite=True)
    assert np.isnan(model.forward(np.zeros((4, 4, 3), np.uint8)).output).any()


# -- sparse triples -----------------------------------------------------------------

def _sparse_file(tmp_path, change, name="s.pt"):
    model, tensors = _tiny()
    tensors = checkpoint.encode_sparse(tensors, ["a.weight"])
    change(tensors)
    path = tmp_path / name
    checkpoint.save(path, model, tensors)
    return path


def test_sparse_weights_load(tmp_path):
    path = _sparse_file(tmp_path, lambda t: None)
    dense = sparsr.load(_edited(tmp_path, lambda h, d: None, "d.pt"))
    np.testing.assert_array_equal(sparsr.load(path).conv_weight("a"), dense.conv_weight("a"))


@pytest.mark.parametrize("change, match", [
    (lambda t: t.update({"a.weight.values": t["a.weight.values"][None]}),
     "'a.weight.values' must be a 1-D float tensor"),
    (lambda t: t.update({"a.weight.shape": t["a.weight.shape"][None]}),
     "'a.weight.shape' must be a 1-D integer tensor"),
    (lambda t: t.update({"a.weight.shape": t["a.weight.shape"].astype(np.float32)}),
     "'a.weight.shape' must be a 1-D integer tensor"),
    (lambda t: t.update({"a.weight.mask": t["a.weight.mask"].astype(np.int8)}),
     "'a.weight.mask' must be a 1-D uint8 tensor"),
    (lambda t: t.update({"a.weight.shape": np.array([-12, 3, 3, -3], np.int64)}),
     "not a shape"),
    (lambda t: t.update({"a.weight.shape": np.array([2 ** 62, 4], np.int64)}),
     "does not fit shape"),
    (lambda t: t.update({"a.weight.shape": np.array([12, 3, 3, 4], np.int64)}),
     "does not fit shape"),
    (lambda t: t.update({"a.weight.values": t["a.weight.values"][:-1]}),
     "values for 324 nonzero positions"),
    (lambda t: t.pop("a.weight.mask"), "lacks 'a.weight.mask'"),
    (lambda t: t.update({"a.weight": np.zeros((12, 3, 3, 3), np.float32)}),
     "stored both dense and sparse"),
])
def test_sparse_triples_are_checked(tmp_path, change, match):
    _refused(_sparse_file(tmp_path, change), match)


# -- the model description ------------------------------------------------------------

def _model_edit(fn):
    return lambda h, d: fn(h["model"])


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(layers=[]), "model 'layers' must be an object"),
    (lambda m: m.update(layers={"a": "nm"}), r"layers\['a'\] must be an object"),
    (lambda m: m.update(layers={"a": {"format": "cs\0r"}}), r"layers\['a'\].format must be"),
    (lambda m: m.update(layers={"a": {"format": "nm", "options": []}}), "options must be an"),
    (lambda m: m.update(layers={"a": {"format": "nm", "options": {"isa": 1}}}),
     "unknown option 'isa'"),
    (lambda m: m.update(layers={"a": {"format": "nm", "options": {"n": "2", "m": 4}}}),
     "options.n must be an int"),
    (lambda m: m.update(layers={"a": {"format": "nm", "options": {"n": 2, "m": 5}}}),
     "m in"),
    (lambda m: m["io"].update(scale=-2), "io.scale must be 1..16"),
    (lambda m: m["io"].update(scale=3), r"graph output is \(3, 128, 128\).*expects \(3, 192, 192\)"),
    (lambda m: m["io"].update(color="grey"), r"graph output is \(3, 128, 128\)|input has 1"),
    (lambda m: m["graph"]["nodes"][0]["attrs"].update(groups=True), "'groups' must be int"),
    (lambda m: m["graph"]["nodes"][0]["attrs"].update(kernel="3"), "'kernel' must be an int"),
    (lambda m: m["graph"]["nodes"][1]["attrs"].update(factor=2 ** 40), "'factor' must be in"),
])
def test_model_fields_are_checked(tmp_path, edit, match):
    _refused(_edited(tmp_path, _model_edit(edit)), match)


def test_a_graph_value_beyond_the_bounds_is_refused_before_running(tmp_path):
    def edit(m):
        nodes = m["graph"]["nodes"]
        nodes.insert(0, {"op": "resize", "name": "big", "inputs": ["image"], "outputs": ["big"],
                         "attrs": {"mode": "nearest", "scale": 1e5}})
        nodes.insert(1, {"op": "resize", "name": "small", "inputs": ["big"],
                         "outputs": ["small"], "attrs": {"mode": "nearest", "scale": 1e-5}})
        nodes[2]["inputs"] = ["small"]
    _refused(_edited(tmp_path, _model_edit(edit)), "value 'big' is")


def test_an_unexpected_exception_of_an_op_becomes_a_checkpoint_error(tmp_path, monkeypatch):
    from sparsr.ops import OPS

    class Broken(OPS["conv2d"]):
        def __init__(self, node, ctx):
            raise TypeError("something\0odd")

    monkeypatch.setitem(OPS, "conv2d", Broken)
    _refused(_edited(tmp_path, lambda h, d: None),
             r"node '[^']+' \(conv2d\) cannot be built \(TypeError: something\\0odd\)")


def test_a_value_error_of_a_native_constructor_names_the_node(tmp_path):
    # 2:4 declared, the weights dense: the native packer refuses them.
    rng = np.random.default_rng(0)
    sd = {"a.weight": rng.standard_normal((12, 4, 3, 3)).astype(np.float32),
          "a.bias": np.zeros(12, np.float32), "b.weight": np.ones((4, 3, 1, 1), np.float32),
          "b.bias": np.zeros(4, np.float32)}
    b = GraphBuilder(sd, IO(scale=2, range=1.0), "tiny")
    model, tensors = b.finish(b.pixel_shuffle(b.conv(b.conv(b.input, "b"), "a"), 2))
    model["layers"] = {"a": {"format": "nm", "options": {"n": 2, "m": 4}}}
    path = tmp_path / "nm.pt"
    checkpoint.save(path, model, tensors)
    _refused(path, r"node '[^']+' \(conv2d\): weights are not 2:4 sparse")
