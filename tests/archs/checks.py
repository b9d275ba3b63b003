"""Checks every architecture test makes: the reference loads the weights
strictly, a mangled state_dict is refused naming the key, the converted graph
computes what the reference computes (run by torch op by op, and by sparsr).

Two forms of the same checks: through `pth.detect` on any state_dict (random
weights or real ones; `refuses_*`, `assert_graph_is_the_network`,
`assert_sparsr_matches`), and through one architecture module with the
hyper-parameters an authors' checkpoint must give (`check_*`,
`graph_vs_reference`, `sparsr_vs_reference` over CROPS).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsr.errors import CheckpointError
from sparsr.graph import IO, Graph
from sparsr.importers import pth

from . import graph_torch
from .common import mangle, one_thread, upscale

# Tolerance on the 0..255 scale between sparsr (float32) and the float32 reference.
MAX_ABS_255 = 0.01


def torch_state(sd: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def load_strictly(net: torch.nn.Module, sd: dict) -> torch.nn.Module:
    """The reference with these weights; strict: every key used, none missing."""
    net.load_state_dict(torch_state(sd), strict=True)
    return net.eval()


def random_state(net: torch.nn.Module, seed: int = 0, gain: float = 1.0) -> dict:
    """Random weights of a reference, as the numpy state_dict read_state_dict gives;
    frozen layers (mean shifts) keep their values. Weights have std gain / sqrt(fan_in):
    a deep residual net needs gain < 1 to keep its activations of order one."""
    with one_thread():
        return _random_state(net, seed, gain)


def _random_state(net: torch.nn.Module, seed: int, gain: float) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in net.state_dict().items():
        frozen = name.startswith(("sub_mean", "add_mean"))
        if frozen:
            out[name] = p.numpy().copy()
            continue
        fan_in = int(np.prod(p.shape[1:])) if p.dim() > 1 else 1
        scale = gain / np.sqrt(fan_in) if p.dim() > 1 else 0.1 * gain
        out[name] = (torch.randn(p.shape, generator=gen) * scale).numpy()
    net.load_state_dict(torch_state(out), strict=True)
    return out


def refuses(sd: dict, expected_words: list[str]) -> str:
    with pytest.raises(CheckpointError) as e:
        pth.detect(sd)
    message = str(e.value)
    for word in expected_words:
        assert word in message, message
    return message


def refuses_missing(sd: dict, key: str) -> str:
    mangled = {k: v for k, v in sd.items() if k != key}
    return refuses(mangled, [repr(key), "missing"])


def refuses_reshaped(sd: dict, key: str, shape: tuple) -> str:
    mangled = dict(sd)
    mangled[key] = np.zeros(shape, dtype=np.float32)
    return refuses(mangled, [repr(key), str(tuple(shape)), str(tuple(sd[key].shape))])


def refuses_unexpected(sd: dict, key: str) -> str:
    mangled = dict(sd)
    mangled[key] = np.zeros(3, dtype=np.float32)
    return refuses(mangled, [repr(key), "unexpected"])


def graph_output(sd: dict, scale: int, x: torch.Tensor):
    """The converted graph run op by op in torch (float64), its model description."""
    arch, hyper = pth.detect(sd)
    model, tensors = arch.build(sd, hyper, scale)
    return graph_torch.run(model, tensors, x), model


def assert_graph_is_the_network(sd: dict, scale: int, reference: torch.nn.Module,
                                x: torch.Tensor, *args, tol: float = 1e-9) -> dict:
    """The graph and the reference (called as reference(x, *args)) agree in float64:
    they compute the same ops."""
    with one_thread(), torch.no_grad():
        got, model = graph_output(sd, scale, x.double())
        want = copy.deepcopy(reference).double()(x.double(), *args)
    assert got.shape == want.shape
    diff = float((got - want).abs().max())
    assert diff <= tol * max(1.0, float(want.abs().max())), diff
    return model


def crop(path: Path, top: int, left: int, height: int = 40, width: int = 48,
         grey: bool = False) -> np.ndarray:
    """A uint8 crop of an image file: (h, w, 3) RGB, or (h, w) luma with grey."""
    from PIL import Image
    with Image.open(path) as im:
        im = im.convert("L" if grey else "RGB")
        a = np.asarray(im)
    out = a[top:top + height, left:left + width]
    assert out.shape[:2] == (height, width), f"{path} is too small for the crop"
    return np.ascontiguousarray(out)


def set14_lr(shared_dir: Path, name: str, scale: int) -> Path:
    return shared_dir / "data" / "Set14" / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png"


def lr_crop(shared_dir: Path, scale: int, height: int = 40, width: int = 48,
            name: str = "baboon") -> np.ndarray:
    """A crop of a Set14 LR image (uint8 RGB), from an offset inside the image."""
    return crop(set14_lr(shared_dir, name, scale), 20, 30, height, width)


def to_input(img: np.ndarray, rgb_range: float) -> torch.Tensor:
    """uint8 (h, w, 3) or (h, w) -> (1, C, h, w) float32 on [0, rgb_range]."""
    a = img.astype(np.float32) * (rgb_range / 255.0)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


# -- sparsr against the reference --------------------------------------------------------

def convert(sd: dict, tmp_path: Path, scale: int, name: str = "model") -> Path:
    """sd written as a .pth and converted by pth.convert, as a user would."""
    src = tmp_path / f"{name}.pth"
    torch.save(torch_state(sd), src)
    dst = tmp_path / f"{name}.pt"
    pth.convert(src, dst, scale=scale)
    return dst


def not_yet_runnable(model: dict) -> list[str]:
    """The ops the graph uses that this build of sparsr lacks (ops are written
    on other branches); empty when it can run."""
    from sparsr.ops import OPS
    return sorted({n["op"] for n in model["graph"]["nodes"]} - set(OPS))


def skip_unless_runnable(model: dict) -> None:
    missing = not_yet_runnable(model)
    if missing:
        pytest.skip(f"this sparsr build cannot run the graph yet: missing {', '.join(missing)}")


def load_or_skip(sd: dict, tmp_path: Path, scale: int):
    import sparsr
    arch, hyper = pth.detect(sd)
    skip_unless_runnable(arch.build(sd, hyper, scale)[0])
    return sparsr.load(convert(sd, tmp_path, scale))


def assert_sparsr_matches(sd: dict, tmp_path: Path, scale: int, reference: torch.nn.Module,
                          img: np.ndarray, *args, color: str = "rgb",
                          rgb_range: float = 1.0) -> float:
    """sparsr.load(...).forward(img) against the float32 reference on the same
    input, on the 0..255 scale: max abs difference <= MAX_ABS_255. Returns it."""
    model = load_or_skip(sd, tmp_path, scale)
    assert model.io.color == color and model.io.range == rgb_range
    got = model.forward(img).output                    # (sH, sW, 3) on 0..255
    if color == "rgb":
        x = to_input(img, rgb_range)
    elif color == "grey":
        x = to_input(img if img.ndim == 2 else img[:, :, 0], rgb_range)
        got = got[:, :, 0]
    else:   # "y": the network sees the luma the runtime computes, and gives one back
        from sparsr.model import _Y
        luma = (img.astype(np.float64) @ _Y + 16.0).astype(np.float32)
        x = torch.from_numpy(luma * np.float32(rgb_range / 255.0))[None, None]
        got = got.astype(np.float64) @ _Y + 16.0
    with one_thread(), torch.no_grad():
        want = reference.float().eval()(x, *args)[0] * (255.0 / rgb_range)
    want = want.permute(1, 2, 0).numpy() if want.shape[0] == 3 else want[0].numpy()
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = float(np.abs(got - want).max())
    assert diff <= MAX_ABS_255, f"max abs difference {diff:.4g} on 0..255"
    return diff


# -- an authors' checkpoint through its architecture module ----------------------------

# Crops of a Set14 LR image: the size the task names, and an odd one (odd
# sizes exercise the stride-2 conv, pooling and resizing of ESA).
CROPS = [(40, 48), (37, 45)]


def check_detection(arch, sd: dict, hyper: dict) -> None:
    assert arch.detect(sd) == hyper
    assert arch.scales(hyper) == [hyper["scale"]]


def check_refusal(arch, sd: dict, hyper: dict, key: str, how: str) -> None:
    """detect and build refuse a mangled state_dict, naming the key."""
    bad, named = mangle(sd, key, how)
    with pytest.raises(CheckpointError, match=re.escape(repr(named))):
        arch.detect(bad)
    with pytest.raises(CheckpointError, match=re.escape(repr(named))):
        arch.build(bad, hyper, hyper["scale"])


def check_graph(arch, sd: dict, hyper: dict, data_range: float) -> tuple[dict, dict]:
    """build gives a structurally valid graph that uses every tensor of the state_dict."""
    model, tensors = arch.build(sd, hyper, hyper["scale"])
    io = IO.from_dict(model["io"])
    assert (io.scale, io.color, io.range) == (hyper["scale"], "rgb", data_range)
    assert model["architecture"] == arch.NAME and model["hyper"] == hyper
    graph = Graph.from_dict(model["graph"])
    graph.check({n.op for n in graph.nodes}, tensors)
    used = {t for n in graph.nodes for t in n.params.values()}
    assert set(sd) <= used, sorted(set(sd) - used)[:5]
    with pytest.raises(CheckpointError, match="upscale"):
        arch.build(sd, hyper, hyper["scale"] + 1)
    return model, tensors


def graph_vs_reference(arch, net: torch.nn.Module, sd: dict, hyper: dict, shared_dir: Path,
                       data_range: float) -> float:
    """Max abs difference (0..255) between the graph run by PyTorch ops and the
    reference network, over the test crops."""
    model, tensors = arch.build(sd, hyper, hyper["scale"])
    worst = 0.0
    for h, w in CROPS:
        lr = lr_crop(shared_dir, hyper["scale"], h, w)
        want = upscale(net, lr, data_range)
        got = graph_torch.upscale_with_graph(model, tensors, lr)
        assert got.shape == want.shape == (h * hyper["scale"], w * hyper["scale"], 3)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def sparsr_vs_reference(arch, net: torch.nn.Module, sd: dict, hyper: dict, shared_dir: Path,
                        data_range: float, tmp_path: Path) -> float:
    """Max abs difference (0..255) between sparsr running the converted
    checkpoint and the reference network, over the test crops. Skips while one
    of the graph's ops is not in this tree."""
    import sparsr
    from sparsr import checkpoint

    model, tensors = arch.build(sd, hyper, hyper["scale"])
    skip_unless_runnable(model)
    path = tmp_path / f"{arch.NAME}.pt"
    checkpoint.save(path, model, tensors)
    loaded = sparsr.load(path)
    worst = 0.0
    for h, w in CROPS:
        lr = lr_crop(shared_dir, hyper["scale"], h, w)
        want = upscale(net, lr, data_range)
        got = loaded.forward(lr).output
        assert got.shape == want.shape
        worst = max(worst, float(np.abs(got - want).max()))
    return worst
