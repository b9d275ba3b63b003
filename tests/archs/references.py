"""The PyTorch reference of a checkpoint, by architecture name, and its ONNX export.

    net = reference_module("rfdn", state_dict, 4)       # loaded strictly, eval mode
    export_onnx(net, "rfdn.onnx", channels=3)
    importers.convert("rfdn.onnx", "rfdn.pt", scale=4, **onnx_options("rfdn", state_dict))

One place for tests/test_onnx_models.py and tools/onnx_roundtrip.py. Names are
the importer's architecture names (sparsr.importers.archs); hyper-parameters
are read by that architecture's `detect`, and the strict load checks every key
and shape against the reference definition, so a misread shows as a refusal.
SMSR's reference is its dense network (archs/smsr.py): the masked one is no
graph of sparsr ops.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from sparsr.errors import CheckpointError
from sparsr.importers.archs import ARCHITECTURES

from .carn_m import CARNM
from .common import one_thread
from .dncnn import DnCNN
from .edsr import EDSR, RCAN
from .fsrcnn import FSRCNN
from .imdn import IMDN
from .msrresnet import MSRResNet
from .rfdn import RFDN
from .rlfn import RLFN
from .smsr import SMSR
from .span import SPAN
from .srvgg import SRVGGNetCompact


class AtScale(nn.Module):
    """A multi-scale network (forward(x, scale)) fixed at one scale."""

    def __init__(self, net: nn.Module, scale: int):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        return self.net(x, self.scale)


def _edsr_args(h: dict) -> dict:
    return {"n_feats": h["n_feats"], "scale": h["scale"], "rgb_range": h["rgb_range"],
            "n_colors": h["n_colors"], "kernel_size": h["kernel_size"]}


# name -> (hyper, scale) -> module with the state_dict's parameter names
_BUILDERS: dict[str, Callable[[dict, int], nn.Module]] = {
    "carn_m": lambda h, s: CARNM(h["num_feat"], h["group"]),
    "dncnn": lambda h, s: DnCNN(h["in_nc"], h["out_nc"], h["nc"], h["nb"]),
    "edsr": lambda h, s: EDSR(h["n_resblocks"], res_scale=h["res_scale"], **_edsr_args(h)),
    "rcan": lambda h, s: RCAN(h["n_resgroups"], h["n_resblocks"], reduction=h["reduction"],
                              **_edsr_args(h)),
    "fsrcnn": lambda h, s: FSRCNN(s, h["num_channels"], h["d"], h["s"], h["m"]),
    "imdn": lambda h, s: IMDN(**h),
    "msrresnet": lambda h, s: MSRResNet(h["num_in_ch"], h["num_out_ch"], h["num_feat"],
                                        h["num_block"], s),
    "rfdn": lambda h, s: RFDN(**h),
    "rlfn": lambda h, s: RLFN(**h),
    "span": lambda h, s: SPAN(h["nf"], s),
    "srvgg": lambda h, s: SRVGGNetCompact(h["num_in_ch"], h["num_out_ch"], h["num_feat"],
                                          h["num_conv"], s),
}


def _detect(name: str, state_dict: Mapping[str, np.ndarray]) -> dict:
    arch = {a.NAME: a for a in ARCHITECTURES}.get(name)
    if arch is None:
        raise ValueError(f"no architecture {name!r}; there are "
                         f"{', '.join(sorted(a.NAME for a in ARCHITECTURES))}")
    hyper = arch.detect(state_dict)
    if hyper is None:
        raise CheckpointError(f"the state_dict is not {name}'s")
    return hyper


def reference_module(name: str, state_dict: Mapping[str, np.ndarray],
                     scale: int) -> nn.Module:
    """The reference network of architecture `name` with these weights at this
    scale, in eval mode; input (1, C, H, W) on the model's pixel range."""
    hyper = _detect(name, state_dict)
    if name == "smsr":
        net = SMSR(state_dict)
    elif name in _BUILDERS:
        net = _BUILDERS[name](hyper, scale)
        net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                            strict=True)
    else:
        raise ValueError(f"tests/archs has no reference of {name!r}")
    if name == "carn_m":
        net = AtScale(net, scale)
    return net.eval()


def onnx_options(name: str, state_dict: Mapping[str, np.ndarray]) -> dict:
    """input_range and color for importers.convert of the reference's ONNX
    export (an ONNX graph carries neither): the architecture's own."""
    hyper = _detect(name, state_dict)
    input_range = {"rfdn": 255.0, "rlfn": 255.0, "smsr": 255.0}.get(name, 1.0)
    if name in ("edsr", "rcan"):
        input_range = float(hyper["rgb_range"])
    channels = next((hyper[k] for k in ("num_channels", "in_nc", "num_in_ch", "n_colors")
                     if k in hyper), 3)
    color = "rgb" if channels == 3 else ("y" if name == "fsrcnn" else "grey")
    return {"input_range": input_range, "color": color}


def export_onnx(module: nn.Module, path: str | os.PathLike, channels: int,
                size: tuple[int, int] = (40, 48)) -> None:
    """torch.onnx.export with dynamic H and W (opset 17, the legacy exporter)."""
    x = torch.rand(1, channels, *size)
    with one_thread(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the legacy exporter's deprecation notice
        torch.onnx.export(module, x, str(path), opset_version=17, input_names=["in"],
                          output_names=["out"],
                          dynamic_axes={"in": {2: "h", 3: "w"}, "out": {2: "h", 3: "w"}},
                          dynamo=False)
