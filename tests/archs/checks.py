"""Checks every architecture test makes: the reference loads the weights
strictly, a mangled state_dict is refused naming the key, the converted graph
computes what the reference computes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsr.errors import CheckpointError
from sparsr.importers import pth

from . import graph_torch

# Tolerance on the 0..255 scale between sparsr (float32) and the float32 reference.
MAX_ABS_255 = 0.01


def torch_state(sd: dict) -> dict:
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def load_strictly(net: torch.nn.Module, sd: dict) -> torch.nn.Module:
    """The reference with these weights; strict: every key used, none missing."""
    net.load_state_dict(torch_state(sd), strict=True)
    return net.eval()


def random_state(net: torch.nn.Module, seed: int = 0) -> dict:
    """Random weights of a reference, as the numpy state_dict read_state_dict gives;
    frozen layers (mean shifts) keep their values. Scaled so that deep nets keep
    activations of order one."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in net.state_dict().items():
        frozen = name.startswith(("sub_mean", "add_mean"))
        if frozen:
            out[name] = p.numpy().copy()
            continue
        fan_in = int(np.prod(p.shape[1:])) if p.dim() > 1 else 1
        scale = 1.0 / np.sqrt(fan_in) if p.dim() > 1 else 0.1
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
    got, model = graph_output(sd, scale, x.double())
    with torch.no_grad():
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


def to_input(img: np.ndarray, rgb_range: float) -> torch.Tensor:
    """uint8 (h, w, 3) or (h, w) -> (1, C, h, w) float32 on [0, rgb_range]."""
    a = img.astype(np.float32) * (rgb_range / 255.0)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
