"""The bugs the fuzzer found, each as a plain test of the error it now gives
(the inputs themselves are in tests/fuzz/corpus, run by test_fuzz_corpus.py)."""

from __future__ import annotations

import io
import json
import struct
import warnings

import numpy as np
import pytest

import sparsr
from sparsr import checkpoint
from sparsr.errors import CheckpointError
from sparsr.graph import IO
from sparsr.importers.builder import GraphBuilder


def _tiny_graph(sd=None, io_=None):
    rng = np.random.default_rng(0)
    sd = sd or {"a.weight": rng.standard_normal((12, 3, 3, 3)).astype(np.float32) * 0.1,
                "a.bias": np.zeros(12, np.float32)}
    b = GraphBuilder(sd, io_ or IO(scale=2, range=1.0), "tiny")
    return b.finish(b.pixel_shuffle(b.conv(b.input, "a"), 2))


# -- checkpoints ---------------------------------------------------------------------

def test_a_header_starting_with_zero_bytes_is_corrupted_not_utf32(tmp_path):
    # json.loads(bytes) would take the text for UTF-32 and raise UnicodeDecodeError.
    text = b"\0\0\0{" + b" " * 12
    path = tmp_path / "z.pt"
    path.write_bytes(struct.pack("<8sIIQ", b"SPARSRCK", 1, 0, len(text)) + text
                     + b"\0" * (64 - 24 - len(text) % 64))
    with pytest.raises(CheckpointError, match="corrupted header"):
        sparsr.load(path)


@pytest.mark.parametrize("rng", [1e-45, 0.0, -1.0, 1e6])
def test_a_pixel_range_the_runtime_cannot_scale_by_is_refused(tmp_path, rng):
    model, tensors = _tiny_graph()
    model["io"]["range"] = rng
    checkpoint.save(tmp_path / "r.pt", model, tensors)
    with pytest.raises(CheckpointError, match=r"io.range must be a number in \[0.001, 65535\]"):
        sparsr.load(tmp_path / "r.pt")


@pytest.mark.parametrize("value", [np.nan, 3e38])
def test_non_finite_outputs_give_a_defined_image_without_warnings(tmp_path, value):
    model, tensors = _tiny_graph()
    tensors["a.weight"][0, 0, 0, 0] = value
    checkpoint.save(tmp_path / "n.pt", model, tensors)
    m = sparsr.load(tmp_path / "n.pt", allow_nonfinite=True)
    img = np.full((5, 4, 3), 200, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = m.upscale(img)
        grey = m.upscale(img[..., 0])
        rgba = m.upscale(np.dstack([img, np.arange(20, dtype=np.uint8).reshape(5, 4)]))
    assert out.shape == (10, 8, 3) and grey.shape == (10, 8) and rgba.shape == (10, 8, 4)


def test_an_in_place_op_after_a_concat_of_one_value_twice(tmp_path):
    # concat([x, x]) lists x's planes twice: an elementwise op after it must
    # not run in place (it would apply twice to those planes).
    rng = np.random.default_rng(1)
    sd = {"a.weight": rng.standard_normal((6, 3, 3, 3)).astype(np.float32),
          "a.bias": np.zeros(6, np.float32)}
    b = GraphBuilder(sd, IO(scale=2, range=1.0), "twice")
    x = b.conv(b.input, "a")
    y = b.mul_const(b.concat([x, x]), [0.5], name="half")
    model, tensors = b.finish(b.pixel_shuffle(y, 2))
    checkpoint.save(tmp_path / "t.pt", model, tensors)
    m = sparsr.load(tmp_path / "t.pt")
    planes = rng.random((3, 6, 5)).astype(np.float32)
    out = m.run_network(planes)          # (3, 12, 10), the shuffle of 12 channels
    shuffled = out.reshape(3, 6, 2, 5, 2).transpose(0, 2, 4, 1, 3).reshape(12, 6, 5)
    # both halves of the concat are x halved once (in place, the shared
    # planes were halved twice or refused)
    np.testing.assert_array_equal(shuffled[:6], shuffled[6:])


# -- ONNX ------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sparsr.importers.onnx_import import graph_from_onnx  # noqa: E402


def _onnx(nodes, inits=(), channels=3, opset=13):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(np.asarray(v), k)
                                                 for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


W = np.zeros((12, 3, 3, 3), np.float32)


CONV = helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1])


def _d2s(src="c", out="y", **attrs):
    return helper.make_node("DepthToSpace", [src], [out], **attrs)


@pytest.mark.parametrize("nodes, match", [
    ([CONV, helper.make_node("Concat", ["c", "c"], ["cc"], axis=[1]),
      helper.make_node("Conv", ["cc", "w2"], ["y"])],
     r"node '#1' \(Concat\): attribute 'axis' must be INT, got INTS"),
    ([CONV, helper.make_node("LeakyRelu", ["c"], ["l"], alpha=b"linear"),
      _d2s("l", blocksize=2)], r"\(LeakyRelu\): attribute 'alpha' must be FLOAT, got STRING"),
    ([CONV, _d2s(blocksize=2, mode=b"\xec\x80")], "attribute 'mode' is not UTF-8 text"),
    ([CONV, _d2s(blocksize=2, colour=1)], "an attribute 'colour' that DepthToSpace does not take"),
    ([CONV, _d2s(out="z", blocksize=2)], "the graph output 'y' is written by no node"),
    ([CONV, helper.make_node("Mul", ["c", ""], ["m"]), _d2s("m", blocksize=2)],
     r"node '#1' \(Mul\): lacks its input 1 \(B\)"),
    ([CONV, helper.make_node("Resize", ["c", "", "s"], ["r"], mode="nearest",
                             coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
      _d2s("r", blocksize=2, mode="DCR")], r"rearranges a \(12, 2048, 3072\) feature"),
])
def test_onnx_nodes_are_refused_naming_the_attribute_or_value(nodes, match):
    inits = [("w", W), ("w2", np.zeros((12, 24, 1, 1), np.float32)),
             ("s", np.array([1, 1, 32, 32], np.float32))]
    with pytest.raises(CheckpointError, match=match):
        graph_from_onnx(_onnx(nodes, inits))


def test_names_that_are_not_utf8_are_refused():
    # protobuf gives a string field that is not UTF-8 as bytes, which the
    # checkpoint's JSON header could not hold
    m = _onnx([CONV, _d2s(blocksize=2)], [("w", W)])
    m.graph.name = b"\x80".decode("latin-1")      # a valid str first
    raw = m.SerializeToString().replace(b"\xc2\x80", b"\x80\x80")
    m = onnx.load_from_string(raw)
    with pytest.raises(CheckpointError, match=r"the graph's name is not UTF-8 text"):
        graph_from_onnx(m)


@pytest.mark.parametrize("shape_node, match", [
    (helper.make_node("ConstantOfShape", ["big"], ["k"]), "more than 4194304 elements"),
    (helper.make_node("Range", ["zero", "huge", "one"], ["k"]), "more than 4194304 elements"),
    (helper.make_node("Expand", ["one", "big"], ["k"]), "more than 4194304 elements"),
    (helper.make_node("Range", ["zero", "huge", "zero"], ["k"]), "a Range from 0.0 to 1099511627776.0 by 0.0"),
])
def test_folded_constants_are_bounded_before_they_are_allocated(shape_node, match):
    nodes = [shape_node, helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "k"], ["a"]),
             helper.make_node("DepthToSpace", ["a"], ["y"], blocksize=2)]
    inits = [("w", W), ("big", np.array([1 << 20, 1 << 20], np.int64)),
             ("zero", np.array(0, np.float32)), ("huge", np.array(2.0 ** 40, np.float32)),
             ("one", np.array(1, np.float32))]
    with pytest.raises(CheckpointError, match=match):
        graph_from_onnx(_onnx(nodes, inits))


# -- PyTorch weights ---------------------------------------------------------------------

torch = pytest.importorskip("torch")

from sparsr.importers import convert  # noqa: E402


def _fsrcnn_sd():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from archs.fsrcnn import FSRCNN
    return dict(FSRCNN(scale_factor=2, d=8, s=4, m=1).state_dict())


@pytest.mark.parametrize("change, match", [
    (lambda sd: sd.update({"first_part.0.bias": sd["first_part.0.bias"].to_sparse()}),
     "tensor 'first_part.0.bias' is a sparse_coo tensor"),
    (lambda sd: sd.update({"first_part.0.bias": torch.empty(8, device="meta")}),
     r"tensor 'first_part.0.bias' is a meta \(no data\) tensor"),
    (lambda sd: sd.update({"first_part.0.bias": sd["first_part.0.bias"].to(torch.complex64)}),
     "tensor 'first_part.0.bias' is a complex tensor"),
    (lambda sd: sd.update({"first_part.0.bias": sd["first_part.0.bias"].to(torch.uint32)}),
     "tensor 'first_part.0.bias' has dtype torch.uint32, not a weight type"),
    (lambda sd: sd.update({"first_part.0.weight": torch.zeros(8)}),
     r"'first_part.0.weight' has shape \(8,\), expected 4 dimensions"),
    (lambda sd: sd.update({"last_part.weight": torch.zeros(())}),
     r"'last_part.weight' has shape \(\), expected 4 dimensions"),
])
def test_pth_weights_are_refused_naming_the_tensor(tmp_path, change, match):
    sd = _fsrcnn_sd()
    change(sd)
    src = tmp_path / "fsrcnn_x2.pth"
    f = io.BytesIO()
    torch.save(sd, f)
    src.write_bytes(f.getvalue())
    with pytest.raises(CheckpointError, match=match):
        convert(src, tmp_path / "out.pt")


def _signalling_nan(dtype):
    ints, bits = (np.uint32, 0x7F800001) if dtype == np.float32 else (np.uint64, 0x7FF0000000000001)
    return np.array(bits, ints).view(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quiet_nans_sets_only_the_quiet_bit_of_signalling_nans(dtype):
    from sparsr.importers import quiet_nans

    a = np.array([1.0, -0.0, np.inf, np.nan, 0.0, 3.5], dtype)
    a[4] = _signalling_nan(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quiet_nans(a)
        assert np.isnan(q[4]) and q.astype(np.float64)[4] != 0
    assert a.view(a.dtype.str.replace("f", "u"))[4] == _signalling_nan(dtype).view(
        a.dtype.str.replace("f", "u"))                 # the input is left as it was
    np.testing.assert_array_equal(np.delete(q, 4), np.delete(a, 4))
    b = np.array([1.0, np.nan], dtype)
    assert quiet_nans(b) is b                          # nothing to do: no copy


def test_a_signalling_nan_in_a_mean_shift_is_refused_without_warnings(tmp_path):
    # The fuzzer's RCAN file: a signalling NaN in sub_mean.weight made
    # numpy warn "invalid value encountered in cast" while reading the range.
    _fsrcnn_sd()                                       # puts tests/ on sys.path
    from archs import checks
    from archs.edsr import EDSR

    sd = {k: torch.from_numpy(v) for k, v in
          checks.random_state(EDSR(n_resblocks=1, n_feats=8)).items()}
    sd["sub_mean.weight"].view(-1)[8] = torch.from_numpy(_signalling_nan(np.float32))
    src = tmp_path / "edsr_x2.pth"
    torch.save(sd, src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match="'sub_mean.weight' holds NaN or infinite"):
            convert(src, tmp_path / "out.pt")


def test_a_smsr_state_dict_with_a_missing_block_is_refused_by_key(tmp_path):
    from fuzz.seeds import smsr_state_dict
    from sparsr.importers.archs import smsr

    sd = smsr_state_dict(n_blocks=3)
    for k in [k for k in sd if k.startswith("body.1.")]:
        del sd[k]
    with pytest.raises(CheckpointError, match="missing 'body.1.body.ch_mask'"):
        smsr.detect(sd)
    sd = smsr_state_dict()
    sd["head.0.weight"] = sd["head.0.weight"][0]
    with pytest.raises(CheckpointError, match="'head.0.weight' has shape"):
        smsr.detect(sd)


def test_a_smsr_channel_mask_with_infinite_logits_is_refused_by_key():
    from fuzz.seeds import smsr_state_dict
    from sparsr.importers.archs import smsr

    sd = smsr_state_dict()
    sd["body.1.body.ch_mask"][0, 0, 0, 0] = np.inf
    with pytest.raises(CheckpointError, match="'body.1.body.ch_mask': ch_mask holds NaN or "
                                              "infinite logits"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            smsr.build(sd, smsr.detect(sd), 2)
