"""Seed inputs of the fuzzer: tiny synthetic networks made in-process.

Checkpoints are written with GraphBuilder (many op kinds, dense, sparse and
N:M weights, RGB / grey / Y io); ONNX models with onnx.helper (convolutions,
pixel shuffle, the shape-folding chains of an exported Resize, constants,
pooling); PyTorch weights are tiny instances of the reference modules in
tests/archs, saved with torch.save in the zip and the legacy format. Nothing is
read from disk: every seed is a few kilobytes made from a fixed random seed.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np

from sparsr import checkpoint
from sparsr.graph import IO
from sparsr.importers.builder import GraphBuilder

TESTS = Path(__file__).resolve().parents[1]


def _w(rng, *shape, gain=0.2):
    return (rng.standard_normal(shape) * gain).astype(np.float32)


def _conv_sd(rng, sd, name, cout, cin, k):
    sd[name + ".weight"] = _w(rng, cout, cin, k, k)
    sd[name + ".bias"] = _w(rng, cout, gain=0.05)


# -- sparsr checkpoints ---------------------------------------------------------------

def _tiny(rng):
    sd = {}
    _conv_sd(rng, sd, "a", 12, 3, 3)
    b = GraphBuilder(sd, IO(scale=2, range=1.0), "tiny")
    return b.finish(b.pixel_shuffle(b.conv(b.input, "a"), 2)), {}


def _rich(rng):
    """Most op kinds in one x2 RGB graph of 8 channels."""
    sd = {}
    _conv_sd(rng, sd, "head", 8, 3, 3)
    _conv_sd(rng, sd, "body", 8, 8, 3)
    _conv_sd(rng, sd, "att", 8, 8, 1)
    _conv_sd(rng, sd, "dil", 4, 4, 3)
    _conv_sd(rng, sd, "grp", 8, 2, 3)
    _conv_sd(rng, sd, "tail", 12, 8, 3)
    sd["act.weight"] = _w(rng, 8)
    b = GraphBuilder(sd, IO(scale=2, range=255.0), "rich")
    x = b.add_const(b.input, [-100.0, -110.0, -120.0], "mean")
    h = b.conv(x, "head")
    y = b.prelu(b.conv(h, "body"), "act")
    y = b.add(y, h)
    p, q = b.split(y, [4, 4])
    p = b.conv(p, "dil", dilation=2)
    q = b.leaky_relu(q, 0.1)
    y = b.concat([p, b.silu(q)])
    y = b.conv(y, "grp", groups=4)
    a = b.sigmoid(b.conv(b.global_mean(y), "att"))
    y = b.mul(y, a)
    s = b.max_pool(y, 3, 2, 1)
    s = b.resize(b.avg_pool(s, 3, 1, 1), "bilinear", like=y)
    y = b.add(y, s)
    y = b.pixel_shuffle(b.conv(b.gelu(y), "tail"), 2)
    y = b.add(y, b.resize(x, "bicubic", scale=2))
    y = b.clamp(b.add_const(y, [100.0, 110.0, 120.0], "unmean"), 0.0, 255.0)
    return b.finish(y), {}


def _sparse(rng):
    """csr, 2:4 and cost-model formats; one weight in the mask/values form."""
    sd = {}
    _conv_sd(rng, sd, "a", 8, 3, 3)
    _conv_sd(rng, sd, "b", 8, 8, 3)
    _conv_sd(rng, sd, "c", 12, 8, 3)
    w = sd["b.weight"]
    w[np.abs(w) < 0.15] = 0
    c = sd["c.weight"].reshape(12, 2, 4, 9)        # 2:4 along input channels
    order = np.argsort(np.abs(c), axis=2)
    np.put_along_axis(c, order[:, :, :2], 0.0, axis=2)
    b = GraphBuilder(sd, IO(scale=2, range=1.0), "sparse")
    y = b.relu(b.conv(b.input, "a"))
    y = b.relu(b.conv(y, "b"))
    model, tensors = b.finish(b.pixel_shuffle(b.conv(y, "c"), 2))
    model["layers"] = {"a": {"format": "sparse"}, "b": {"format": "csr"},
                       "c": {"format": "nm", "options": {"n": 2, "m": 4}}}
    return (model, checkpoint.encode_sparse(tensors, ["b.weight"])), {}


def _grey_transposed(rng):
    """FSRCNN-like grey x2: conv, PReLU, transposed conv, tanh."""
    sd = {}
    _conv_sd(rng, sd, "first", 6, 1, 5)
    sd["first_act.weight"] = _w(rng, 1)
    sd["last.weight"] = _w(rng, 6, 1, 5, 5)
    sd["last.bias"] = _w(rng, 1)
    b = GraphBuilder(sd, IO(scale=2, range=1.0, color="grey"), "grey")
    y = b.prelu(b.conv(b.input, "first"), "first_act")
    y = b.conv_transpose(y, "last", stride=2, padding=2, output_padding=1)
    return b.finish(b.tanh(y)), {}


def _y_std(rng):
    """Y io, global std, sub, x1 denoiser shape."""
    sd = {}
    _conv_sd(rng, sd, "a", 4, 1, 3)
    _conv_sd(rng, sd, "b", 1, 4, 3)
    b = GraphBuilder(sd, IO(scale=1, range=255.0, color="y"), "y")
    y = b.relu(b.conv(b.input, "a"))
    y = b.mul(y, b.global_std(y))
    return b.finish(b.sub(b.input, b.conv(y, "b"))), {}


def _smsr(rng):
    from sparsr.importers.archs import smsr
    sd = smsr_state_dict()
    return smsr.build(sd, smsr.detect(sd), 2), {}


GRAPH_SEEDS = {"smsr": _smsr, "tiny": _tiny, "rich": _rich, "sparse": _sparse, "grey": _grey_transposed,
               "y": _y_std}


def checkpoint_bytes(model, tensors, metadata=None) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "seed.pt"
        checkpoint.save(path, model, tensors, metadata or {"seed": True})
        return path.read_bytes()


def checkpoint_seeds() -> dict[str, bytes]:
    out = {}
    for i, (name, make) in enumerate(GRAPH_SEEDS.items()):
        (model, tensors), _ = make(np.random.default_rng(i))
        out[name] = checkpoint_bytes(model, tensors)
    return out


# -- ONNX -----------------------------------------------------------------------------

def onnx_seeds() -> dict[str, bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)

    def model(nodes, inits, channels=3, opset=13, out=None):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, "h", "w"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out)
        g = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fuzz-seed")
        m.ir_version = 8
        return m.SerializeToString()

    seeds = {}
    # conv, relu, conv, DepthToSpace x2
    seeds["conv_d2s"] = model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("DepthToSpace", ["c2"], ["y"], blocksize=2, mode="CRD")],
        [("w1", _w(rng, 8, 3, 3, 3)), ("b1", _w(rng, 8)), ("w2", _w(rng, 12, 8, 3, 3))])
    # an exported nearest Resize: Shape/Gather/Mul/Concat feeding sizes, plus PRelu, Add
    seeds["resize_chain"] = model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c1", "slope"], ["p1"]),
         helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Gather", ["s", "i23"], ["hw"], axis=0),
         helper.make_node("Mul", ["hw", "two"], ["hw2"]),
         helper.make_node("Slice", ["s", "z0", "i2"], ["nc"]),
         helper.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
         helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
         helper.make_node("DepthToSpace", ["c2"], ["d"], blocksize=2),
         helper.make_node("Add", ["d", "up"], ["y"])],
        [("w1", _w(rng, 6, 3, 3, 3)), ("b1", _w(rng, 6)),
         ("slope", _w(rng, 6, 1, 1)), ("w2", _w(rng, 12, 6, 3, 3)), ("b2", _w(rng, 12)),
         ("i23", np.array([2, 3], np.int64)), ("two", np.array([2, 2], np.int64)),
         ("z0", np.array([0], np.int64)), ("i2", np.array([2], np.int64))], opset=13)
    # scales Resize (bilinear), sigmoid attention (GlobalAveragePool, Mul), Clip, opset 17
    seeds["attention"] = model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c1"], ["g"]),
         helper.make_node("Conv", ["g", "wa"], ["ga"]),
         helper.make_node("Sigmoid", ["ga"], ["sa"]),
         helper.make_node("Mul", ["c1", "sa"], ["m"]),
         helper.make_node("MaxPool", ["m"], ["mp"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Resize", ["mp", "", "scales"], ["up"], mode="linear"),
         helper.make_node("Conv", ["up", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["c2", "lo", "hi"], ["y"])],
        [("w1", _w(rng, 4, 3, 3, 3)), ("b1", _w(rng, 4)), ("wa", _w(rng, 4, 4, 1, 1)),
         ("scales", np.array([1, 1, 2, 2], np.float32)), ("w2", _w(rng, 3, 4, 3, 3)),
         ("b2", _w(rng, 3)), ("lo", np.array(0, np.float32)), ("hi", np.array(1, np.float32))],
        opset=17)
    # grey, ConvTranspose, LeakyRelu, Split / Concat, Constant, Reshape/Transpose shuffle
    seeds["grey_misc"] = model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2, 2, 2]),
         helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.2),
         helper.make_node("Split", ["l1", "sp"], ["s1", "s2"], axis=1),
         helper.make_node("Tanh", ["s2"], ["t2"]),
         helper.make_node("Concat", ["s1", "t2"], ["cat"], axis=1),
         helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(
             np.array(0.5, np.float32))),
         helper.make_node("Mul", ["cat", "k"], ["half"]),
         helper.make_node("ConvTranspose", ["half", "wt", "bt"], ["y"], strides=[2, 2],
                          pads=[1, 1, 1, 1], output_padding=[1, 1])],
        [("w1", _w(rng, 4, 1, 5, 5)), ("b1", _w(rng, 4)), ("sp", np.array([2, 2], np.int64)),
         ("wt", _w(rng, 4, 1, 3, 3)), ("bt", _w(rng, 1))], channels=1)
    return seeds


# -- PyTorch weights --------------------------------------------------------------------

def torch_modules():
    """Tiny instances of the reference networks whose weights sparsr reads."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from archs.carn_m import CARNM
    from archs.dncnn import DnCNN
    from archs.edsr import EDSR, RCAN
    from archs.fsrcnn import FSRCNN
    from archs.msrresnet import MSRResNet
    from archs.srvgg import SRVGGNetCompact

    return {"fsrcnn_x2": FSRCNN(scale_factor=2, d=8, s=4, m=1),
            "srvgg": SRVGGNetCompact(num_feat=8, num_conv=2, upscale=2),
            "edsr": EDSR(n_resblocks=1, n_feats=8, scale=2),
            "msrresnet": MSRResNet(num_feat=8, num_block=1, upscale=2),
            "dncnn": DnCNN(in_nc=3, out_nc=3, nc=8, nb=5),
            "carn_m": CARNM(feat=8, group=2),
            "rcan": RCAN(n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4, scale=2)}


def torch_bytes(obj, legacy: bool = False) -> bytes:
    import torch
    f = io.BytesIO()
    torch.save(obj, f, _use_new_zipfile_serialization=not legacy)
    return f.getvalue()


def smsr_state_dict(n_feats: int = 16, n_layers: int = 2, n_blocks: int = 2, scale: int = 2):
    """Random SMSR weights of the official layout, small (numpy arrays)."""
    from sparsr.ops.smsr import module_shapes

    rng = np.random.default_rng(1)
    shapes = {"sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,),
              "head.0.weight": (n_feats, 3, 3, 3), "head.0.bias": (n_feats,),
              "head.2.weight": (n_feats, n_feats, 3, 3), "head.2.bias": (n_feats,),
              "collect.0.weight": (n_feats, n_feats * n_blocks, 1, 1),
              "collect.0.bias": (n_feats,),
              "collect.2.weight": (n_feats, n_feats, 3, 3), "collect.2.bias": (n_feats,),
              "tail.0.weight": (3 * scale * scale, n_feats, 3, 3),
              "tail.0.bias": (3 * scale * scale,),
              "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,)}
    for k in range(n_blocks):
        shapes.update({f"body.{k}.{n}": s for n, s in module_shapes(n_feats, n_layers).items()})
    sd = {k: _w(rng, *s, gain=0.1) for k, s in shapes.items()}
    for name in ("sub_mean", "add_mean"):
        sd[name + ".weight"] = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    return sd


def pth_state_dicts() -> dict[str, dict]:
    import torch
    torch.manual_seed(0)
    out = {name: {k: v.detach().clone() for k, v in m.state_dict().items()}
           for name, m in torch_modules().items()}
    out["smsr"] = {k: torch.from_numpy(v) for k, v in smsr_state_dict().items()}
    return out


def pth_seeds() -> dict[str, bytes]:
    out = {}
    for name, sd in pth_state_dicts().items():
        out[name] = torch_bytes(sd)
        if name in ("fsrcnn_x2", "srvgg"):
            out[name + "_legacy"] = torch_bytes(sd, legacy=True)
            out[name + "_wrapped"] = torch_bytes({"params_ema": {"module." + k: v
                                                                 for k, v in sd.items()}})
    return out
