"""Reading the authors' checkpoints and running a reference network on images."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsr.metrics import psnr_y, quantize


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .pth state_dict, with nn.DataParallel's ``module.`` prefix removed."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def conv(cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None) -> nn.Conv2d:
    """nn.Conv2d with bias and, by default, "same" padding for odd kernels."""
    return nn.Conv2d(cin, cout, k, stride, k // 2 if padding is None else padding)


@contextlib.contextmanager
def one_thread():
    """Torch on one thread: for many small tensors its thread pool costs far more
    than it saves, the more so on the test machines' shared cores (a second torch
    thread spinning on a busy core makes these small convs 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def upscale(net: nn.Module, lr: np.ndarray, data_range: float) -> np.ndarray:
    """The network's output for an (H, W, 3) uint8 image, as float32 on 0..255
    (the authors divide the uint8 image by 255 / data_range)."""
    x = torch.from_numpy(np.array(lr, dtype=np.uint8)).permute(2, 0, 1)[None].float()
    with torch.no_grad(), one_thread():
        y = net(x / (255.0 / data_range))
    return (y[0].permute(1, 2, 0) * (255.0 / data_range)).numpy()


def mean_psnr(net: nn.Module, pairs, scale: int, data_range: float) -> float:
    """Mean Y-PSNR over (name, lr, hr) triples, the output rounded to uint8 first."""
    scores = [psnr_y(quantize(upscale(net, lr, data_range)), hr, scale) for _, lr, hr in pairs]
    return float(np.mean(scores))


MANGLINGS = ("missing", "wrong shape", "unexpected")


def mangle(sd: dict, key: str, how: str) -> tuple[dict, str]:
    """A copy of sd with `key` removed, `key` one output channel short, or a key
    the network does not have added; and the key a refusal must name."""
    if how == "missing":
        return {k: v for k, v in sd.items() if k != key}, key
    if how == "wrong shape":
        return dict(sd, **{key: sd[key][:-1]}), key
    extra = key.rsplit(".", 1)[0] + ".extra"
    return dict(sd, **{extra: sd[key]}), extra

