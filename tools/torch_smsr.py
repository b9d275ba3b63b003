"""SMSR as a PyTorch module, for the offline tools and the benchmarks.

`SMSR.from_state_dict(sd)` builds the network from the authors' (or a sparsr
checkpoint's) tensors. `forward(x, masks=False)` is the plain dense network
(every mask 1): the PyTorch baseline of the benchmarks and the trainable form
used for fine-tuning. With `masks=True` it applies the inference-time spatial
and channel masks as multiplications (SMSR paper section 4.2, written densely),
the masks themselves held fixed: gradients flow to the conv weights only.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv(w: torch.Tensor, b: torch.Tensor | None) -> nn.Conv2d:
    cout, cin, k, _ = w.shape
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=b is not None)
    with torch.no_grad():
        conv.weight.copy_(w)
        if b is not None:
            conv.bias.copy_(b)
    return conv


class _Module(nn.Module):
    def __init__(self, sd: Mapping[str, torch.Tensor], p: str, n_layers: int):
        super().__init__()
        self.mask1 = _conv(sd[f"{p}.spa_mask.0.weight"], sd[f"{p}.spa_mask.0.bias"])
        self.mask2 = _conv(sd[f"{p}.spa_mask.3.weight"], sd[f"{p}.spa_mask.3.bias"])
        up_w = sd[f"{p}.spa_mask.5.weight"]
        self.mask_up = nn.ConvTranspose2d(up_w.shape[0], up_w.shape[1], 3, 2, 1, output_padding=1)
        with torch.no_grad():
            self.mask_up.weight.copy_(up_w)
            self.mask_up.bias.copy_(sd[f"{p}.spa_mask.5.bias"])
        self.layers = nn.ModuleList(_conv(sd[f"{p}.body.body.{i}.weight"], None)
                                    for i in range(n_layers))
        self.collect = _conv(sd[f"{p}.body.collect.weight"], sd[f"{p}.body.collect.bias"])
        self.ca1 = _conv(sd[f"{p}.ca.conv_du.0.weight"], sd[f"{p}.ca.conv_du.0.bias"])
        self.ca2 = _conv(sd[f"{p}.ca.conv_du.2.weight"], sd[f"{p}.ca.conv_du.2.bias"])
        soft = torch.softmax(sd[f"{p}.body.ch_mask"].float(), dim=3).round()
        self.register_buffer("dense", soft[0, :, :, 0].t().contiguous())   # (L, C), 1 = dense

    def spatial_mask(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.mask1(x))
        y = F.relu(self.mask2(F.avg_pool2d(y, 2)))
        y = self.mask_up(y)
        m = (y[:, 1:] > y[:, :1]).to(x.dtype)
        return F.pad(m, [0, x.shape[3] - m.shape[3], 0, x.shape[2] - m.shape[2]])

    def forward(self, x: torch.Tensor, masks: bool) -> torch.Tensor:
        outs = []
        y = x
        if masks:
            m = self.spatial_mask(x).detach()
            dense_in = torch.ones(x.shape[1], device=x.device, dtype=x.dtype)
            for i, conv in enumerate(self.layers):
                d_in = dense_in.view(1, -1, 1, 1)
                d_out = self.dense[i].view(1, -1, 1, 1)
                full = conv(y)
                from_dense = F.conv2d(y * d_in, conv.weight, padding=1)
                # dense outputs: dense inputs everywhere, sparse inputs at important
                # pixels; sparse outputs only at important pixels.
                y = F.relu(d_out * (from_dense + m * (full - from_dense)) + (1 - d_out) * m * full)
                outs.append(y)
                dense_in = self.dense[i]
        else:
            for conv in self.layers:
                y = F.relu(conv(y), inplace=True)   # in place, as the authors' nn.ReLU(True)
                outs.append(y)
        y = self.collect(torch.cat(outs, 1))
        s = torch.sigmoid(self.ca2(F.relu(self.ca1(y.mean(dim=(2, 3), keepdim=True)))))
        return y * s + x


class SMSR(nn.Module):
    def __init__(self, sd: Mapping[str, torch.Tensor], scale: int, n_blocks: int, n_layers: int):
        super().__init__()
        self.scale = scale
        self.register_buffer("in_matrix", sd["sub_mean.weight"][:, :, 0, 0].clone())
        self.register_buffer("in_bias", sd["sub_mean.bias"].clone())
        self.register_buffer("out_matrix", sd["add_mean.weight"][:, :, 0, 0].clone())
        self.register_buffer("out_bias", sd["add_mean.bias"].clone())
        self.head1 = _conv(sd["head.0.weight"], sd["head.0.bias"])
        self.head2 = _conv(sd["head.2.weight"], sd["head.2.bias"])
        self.blocks = nn.ModuleList(_Module(sd, f"body.{k}", n_layers) for k in range(n_blocks))
        self.collect1 = _conv(sd["collect.0.weight"], sd["collect.0.bias"])
        self.collect2 = _conv(sd["collect.2.weight"], sd["collect.2.bias"])
        self.tail = _conv(sd["tail.0.weight"], sd["tail.0.bias"])

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, np.ndarray | torch.Tensor]) -> "SMSR":
        t = {k: torch.as_tensor(np.asarray(v)).float() for k, v in sd.items()}
        n_blocks = 1 + max(int(k.split(".")[1]) for k in t if k.startswith("body.") and
                           k.endswith(".body.ch_mask"))
        n_layers = t["body.0.body.ch_mask"].shape[2]
        scale = int(round((t["tail.0.weight"].shape[0] / 3) ** 0.5))
        return cls(t, scale, n_blocks, n_layers)

    def core_convs(self) -> dict[str, nn.Conv2d]:
        """The 3x3 convs inside the modules, by their checkpoint names."""
        return {f"body.{k}.body.body.{i}": conv for k, b in enumerate(self.blocks)
                for i, conv in enumerate(b.layers)}

    def forward(self, x: torch.Tensor, masks: bool = False) -> torch.Tensor:
        """x: (N, 3, H, W) on 0..255 -> (N, 3, sH, sW) on 0..255, unrounded."""
        x0 = torch.einsum("oc,nchw->nohw", self.in_matrix, x) + self.in_bias.view(1, -1, 1, 1)
        h = self.head2(F.relu(self.head1(x0), inplace=True))
        fea, outs = h, []
        for block in self.blocks:
            fea = block(fea, masks)
            outs.append(fea)
        y = self.collect2(F.relu(self.collect1(torch.cat(outs, 1)), inplace=True)) + h
        y = F.pixel_shuffle(self.tail(y), self.scale)
        y = y + F.interpolate(x0, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return torch.einsum("oc,nchw->nohw", self.out_matrix, y) + self.out_bias.view(1, -1, 1, 1)
