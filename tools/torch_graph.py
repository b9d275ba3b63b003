"""Any sparsr graph as a differentiable PyTorch module, for fine-tuning and search.

    net = GraphModule.from_model(sparsr.load("rfdn_x4.pt"))     # or from_checkpoint(path)
    sr = net.upscale_batch(lr)            # (N, 3, H, W) RGB on 0..255 -> (N, 3, sH, sW)
    loss(sr, hr).backward(); opt.step()
    model.replace_weights(net.tensors())  # the trained weights back into the engine

Every op of python/sparsr/ops (the registry in ops/__init__.py) is written here in
torch as the graph contract defines it, so no network needs a hand-written twin.
The graph's tensors are the module's parameters and buffers under their own names
(``net.state_dict()`` keys are the checkpoint's tensor names, and
``torch.func.functional_call(net, {name: w}, x)`` substitutes a weight by its name):
the weights and biases of conv2d, conv_transpose2d, prelu and of SMSR modules are
parameters, every other tensor (constants, SMSR channel masks) a fixed buffer.

``smsr_module`` runs as the engine runs it in mask mode (SMSR paper section 4.2,
written densely as multiplications): the spatial mask in its hard form (computed
from the input and detached, or given: the engine's own, ``Forward.masks``) and
the rounded channel masks, both held fixed, so gradients reach the conv weights
only. ``masks=False`` is the engine's dense mode (every mask 1).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_UNARY = {"relu": torch.relu, "sigmoid": torch.sigmoid, "silu": F.silu, "tanh": torch.tanh}
# Roles of the tensors a fine-tuning trains (the rest are fixed buffers).
_TRAINED_OPS = {"conv2d", "conv_transpose2d", "prelu"}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _other(attrs: Mapping, params: Mapping[str, torch.Tensor], ins: list[torch.Tensor]):
    """The second operand of add/sub/mul: a value, a per-channel tensor or a scalar."""
    if len(ins) == 2:
        return ins[1]
    if "other" in params:
        return params["other"].reshape(1, -1, 1, 1)
    return float(attrs["value"])


def _global(x: torch.Tensor, op: str) -> torch.Tensor:
    """global_mean / global_std (population), accumulated in double as the runtime does."""
    d = x.double()
    mean = d.mean(dim=(2, 3), keepdim=True)
    if op == "global_std":
        mean = ((d - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    return mean.to(x.dtype)


def _conv2d(x, p, a):
    w = p["weight"]
    kh, kw = w.shape[2], w.shape[3]
    d = _pair(a.get("dilation", 1))
    pad = _pair(a.get("padding", [kh // 2 * d[0], kw // 2 * d[1]]))
    return F.conv2d(x, w, p.get("bias"), _pair(a.get("stride", 1)), pad, d,
                    int(a.get("groups", 1)))


def run_node(op: str, attrs: Mapping[str, Any], ins: list[torch.Tensor],
             p: Mapping[str, torch.Tensor], *, masks: bool = True,
             spatial_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One node's outputs from its inputs and parameters (tensors by role)."""
    a = attrs
    if op == "conv2d":
        return [_conv2d(ins[0], p, a)]
    if op == "conv_transpose2d":
        return [F.conv_transpose2d(ins[0], p["weight"], p.get("bias"), _pair(a.get("stride", 1)),
                                   _pair(a.get("padding", 0)), _pair(a.get("output_padding", 0)),
                                   int(a.get("groups", 1)))]
    if op in _UNARY:
        return [_UNARY[op](ins[0])]
    if op == "leaky_relu":
        return [F.leaky_relu(ins[0], a.get("slope", 0.01))]
    if op == "gelu":
        return [F.gelu(ins[0], approximate=a.get("approximate", "none"))]
    if op == "clamp":
        return [torch.clamp(ins[0], a.get("min"), a.get("max"))]
    if op == "prelu":
        return [F.prelu(ins[0], p["weight"].reshape(-1))]
    if op in ("add", "mul"):
        other = _other(a, p, ins)
        return [ins[0] + other if op == "add" else ins[0] * other]
    if op == "sub":
        other = _other(a, p, ins)
        return [other - ins[0] if a.get("reverse") else ins[0] - other]
    if op == "concat":
        return [torch.cat(ins, 1)]
    if op == "split":
        return list(torch.split(ins[0], list(a["sizes"]), 1))
    if op == "slice":
        return [ins[0][:, a["start"]:a["stop"]]]
    if op == "pixel_shuffle":
        return [F.pixel_shuffle(ins[0], a["factor"])]
    if op == "pixel_unshuffle":
        return [F.pixel_unshuffle(ins[0], a["factor"])]
    if op == "resize":
        mode = a.get("mode", "nearest")
        corners = a.get("align_corners", False) if mode != "nearest" else None
        if len(ins) == 2:
            return [F.interpolate(ins[0], size=ins[1].shape[2:], mode=mode,
                                  align_corners=corners)]
        return [F.interpolate(ins[0], scale_factor=a["scale"], mode=mode, align_corners=corners)]
    if op == "max_pool":
        return [F.max_pool2d(ins[0], _pair(a["kernel"]), _pair(a.get("stride", a["kernel"])),
                             _pair(a.get("padding", 0)))]
    if op == "avg_pool":
        return [F.avg_pool2d(ins[0], _pair(a["kernel"]), _pair(a.get("stride", a["kernel"])),
                             _pair(a.get("padding", 0)), count_include_pad=True)]
    if op in ("global_mean", "global_std"):
        return [_global(ins[0], op)]
    if op == "smsr_module":
        attention = a.get("attention", True)
        return [smsr_module(ins[0], p, masks, spatial_mask, attention)]
    raise NotImplementedError(f"torch_graph has no op {op!r}")


# -- SMSR's sparse mask module --------------------------------------------------------

def smsr_spatial_mask(x: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """(N, 1, H, W) float 0/1: the hard spatial mask, as the engine computes it
    (zero in the last row / column of an odd size), detached."""
    with torch.no_grad():
        y = F.relu(F.conv2d(x, p["spa_mask.0.weight"], p["spa_mask.0.bias"], padding=1))
        y = F.relu(F.conv2d(F.avg_pool2d(y, 2), p["spa_mask.3.weight"], p["spa_mask.3.bias"],
                            padding=1))
        y = F.conv_transpose2d(y, p["spa_mask.5.weight"], p["spa_mask.5.bias"], 2, 1, 1)
        m = (y[:, 1:] > y[:, :1]).to(x.dtype)
        return F.pad(m, [0, x.shape[3] - m.shape[3], 0, x.shape[2] - m.shape[2]])


def smsr_channel_masks(ch_mask: torch.Tensor) -> torch.Tensor:
    """(L, C) float 0/1, 1 where a layer's output channel is dense (ops/smsr.py)."""
    from sparsr.ops.smsr import channel_masks
    dense = channel_masks(ch_mask.detach().cpu().numpy())
    return torch.from_numpy(dense.astype(np.float32)).to(ch_mask.device)


def smsr_module(x: torch.Tensor, p: Mapping[str, torch.Tensor], masks: bool,
                spatial: torch.Tensor | None = None, attention: bool = True) -> torch.Tensor:
    """One SMM: dense channels everywhere (from dense inputs everywhere, sparse
    inputs at important pixels), sparse channels at important pixels only.
    attention false: the collect's output, before the channel attention and
    the residual (which the graph then does with its own ops)."""
    n_layers = p["body.ch_mask"].shape[2]
    outs, y = [], x
    if masks:
        m = smsr_spatial_mask(x, p) if spatial is None else spatial.to(x.dtype)
        dense = smsr_channel_masks(p["body.ch_mask"]).to(x.dtype)
        d_in = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        for i in range(n_layers):
            w = p[f"body.body.{i}.weight"]
            d_out = dense[i].view(1, -1, 1, 1)
            full = F.conv2d(y, w, padding=1)
            from_dense = F.conv2d(y * d_in.view(1, -1, 1, 1), w, padding=1)
            y = F.relu(d_out * (from_dense + m * (full - from_dense)) + (1 - d_out) * m * full)
            outs.append(y)
            d_in = dense[i]
    else:
        for i in range(n_layers):
            y = F.relu(F.conv2d(y, p[f"body.body.{i}.weight"], padding=1))
            outs.append(y)
    y = F.conv2d(torch.cat(outs, 1), p["body.collect.weight"], p["body.collect.bias"])
    if not attention:
        return y
    z = F.relu(F.conv2d(y.mean(dim=(2, 3), keepdim=True), p["ca.conv_du.0.weight"],
                        p["ca.conv_du.0.bias"]))
    s = torch.sigmoid(F.conv2d(z, p["ca.conv_du.2.weight"], p["ca.conv_du.2.bias"]))
    return y * s + x


# -- the module -----------------------------------------------------------------------

def _trained(node: Mapping, role: str) -> bool:
    if node["op"] in _TRAINED_OPS:
        return role in ("weight", "bias")
    if node["op"] == "smsr_module":
        return role.endswith((".weight", ".bias"))
    return False


class GraphModule(nn.Module):
    """A sparsr graph (model description + tensors) as an nn.Module."""

    def __init__(self, description: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        graph = description["graph"]
        self.nodes = [dict(n) for n in graph["nodes"]]
        self.input = graph["inputs"][0]
        self.output = graph["outputs"][0]
        io = description.get("io", {})
        self.scale = int(io.get("scale", 1))
        self.color = io.get("color", "rgb")
        self.channel_order = io.get("channel_order", "rgb")
        self.range = float(io.get("range", 1.0))
        trained = {t for n in self.nodes for role, t in n.get("params", {}).items()
                   if _trained(n, role)}
        used = list(dict.fromkeys(t for n in self.nodes for t in n.get("params", {}).values()))
        self._where: dict[str, tuple[nn.Module, str]] = {}
        self._path: dict[str, str] = {}
        for name in used:
            value = torch.as_tensor(np.array(tensors[name], dtype=np.float32)).to(dtype)
            owner, attr, path = self._slot(name)
            if name in trained:
                owner.register_parameter(attr, nn.Parameter(value))
            else:
                owner.register_buffer(attr, value)
            self._where[name] = (owner, attr)
            self._path[name] = path
        self._convs = list(dict.fromkeys(
            t[:-len(".weight")] for n in self.nodes for role, t in n.get("params", {}).items()
            if t.endswith(".weight") and np.ndim(tensors[t]) == 4
            and n["op"] in ("conv2d", "smsr_module")))

    @classmethod
    def from_model(cls, model, dtype: torch.dtype = torch.float32) -> "GraphModule":
        """From a loaded sparsr.Model (its description and current tensors)."""
        return cls(model.description, model.tensors, dtype)

    @classmethod
    def from_checkpoint(cls, path, dtype: torch.dtype = torch.float32) -> "GraphModule":
        from sparsr import checkpoint
        description, tensors, _ = checkpoint.load(path)
        return cls(description, checkpoint.decode_sparse(tensors), dtype)

    def _slot(self, name: str) -> tuple[nn.Module, str, str]:
        """The submodule and attribute a tensor lives at: its name split at the
        dots (so that parameter paths are tensor names), else flat."""
        parts = name.split(".")
        if all(parts) and all(p.isidentifier() or p.isdigit() for p in parts):
            owner: nn.Module = self
            for part in parts[:-1]:
                child = owner._modules.get(part)
                if child is None:
                    if hasattr(owner, part):
                        break
                    child = nn.Module()
                    owner.add_module(part, child)
                owner = child
            else:
                if not hasattr(owner, parts[-1]):
                    return owner, parts[-1], name
        flat = "t_" + "".join(c if c.isalnum() else "_" for c in name)
        while hasattr(self, flat):
            flat += "_"
        return self, flat, flat

    # -- tensors ------------------------------------------------------------------

    def tensor(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding graph tensor `name`."""
        try:
            owner, attr = self._where[name]
        except KeyError:
            raise KeyError(f"the graph uses no tensor named {name!r}") from None
        return getattr(owner, attr)

    def param_path(self, name: str) -> str:
        """Its path in named_parameters() / functional_call (the name itself when it can be)."""
        self.tensor(name)
        return self._path[name]

    def conv_names(self) -> list[str]:
        """Every conv2d / SMSR-module convolution (weight tensor without .weight), graph order."""
        return list(self._convs)

    def conv_weight(self, name: str) -> torch.Tensor:
        return self.tensor(name + ".weight")

    def tensors(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The current float32 values of graph tensors (default: every trained one)."""
        if names is None:
            names = [n for n in self._where if isinstance(self.tensor(n), nn.Parameter)]
        return {n: self.tensor(n).detach().cpu().numpy().astype(np.float32) for n in names}

    def export_tensors(self, base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """base (a checkpoint's tensors) with every trained tensor replaced by its value here."""
        return dict(base, **self.tensors())

    def write_back(self, model, names: Iterable[str] | None = None) -> None:
        """Copies the trained tensors into a loaded sparsr.Model (Model.replace_weights)."""
        model.replace_weights(self.tensors(names))

    # -- running ------------------------------------------------------------------

    def forward(self, x: torch.Tensor, masks: bool = True,
                spatial_masks: Sequence[Any] | None = None, image: bool = False) -> torch.Tensor:
        """The graph on x of (N, C, H, W) network planes (its io range and
        layout, as Model.run_network). masks=False: the engine's dense mode.
        spatial_masks: one (H, W) bool mask per SMSR module, in graph order
        (Forward.masks of the engine), instead of computing them here.
        image=True: x and the result are RGB on 0..255 (see upscale_batch)."""
        if image:
            if self.color != "rgb":
                raise ValueError(f"image=True takes RGB networks; this one works on "
                                 f"{self.color!r} planes (give it its planes)")
            bgr = self.channel_order == "bgr"
            y = self((x.flip(1) if bgr else x) * (self.range / 255.0), masks, spatial_masks)
            y = y * (255.0 / self.range)
            return y.flip(1) if bgr else y
        values = {self.input: x}
        k = 0
        for node in self.nodes:
            params = {role: self.tensor(t) for role, t in node.get("params", {}).items()}
            spatial = None
            if node["op"] == "smsr_module" and spatial_masks is not None:
                spatial = torch.as_tensor(np.asarray(spatial_masks[k]), device=x.device)
                spatial = spatial.to(x.dtype).reshape(1, 1, *spatial.shape[-2:])
                k += 1
            outs = run_node(node["op"], node.get("attrs", {}),
                            [values[v] for v in node["inputs"]], params, masks=masks,
                            spatial_mask=spatial)
            if len(outs) != len(node["outputs"]):
                raise ValueError(f"node {node['name']!r}: {len(outs)} outputs, the graph names "
                                 f"{len(node['outputs'])}")
            values.update(zip(node["outputs"], outs))
        return values[self.output]

    def upscale_batch(self, rgb: torch.Tensor, masks: bool = True,
                      spatial_masks: Sequence[Any] | None = None) -> torch.Tensor:
        """(N, 3, H, W) RGB on 0..255 -> (N, 3, sH, sW) on 0..255, unrounded: the
        io conversion of Model.forward for RGB networks."""
        return self(rgb, masks=masks, spatial_masks=spatial_masks, image=True)

    def upscaler(self, masks: bool = True):
        """uint8 (H, W, 3) -> float (sH, sW, 3) on 0..255 (tools/evaluate.py's Upscaler)."""
        def run(img: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None]
            with torch.no_grad():
                y = self.upscale_batch(x, masks=masks)
            return y[0].permute(1, 2, 0).numpy()
        return run
