"""SMSR x2 as an nn.Module over the authors' state_dict, made of the functional
reference in tests/smsr_reference.py (so that torch.onnx.export can trace it).

With ``masks=False`` every spatial mask is one: the dense network, which
sparsr runs in mode "dense". With ``masks=True`` the spatial masks are the
inference-time ones (a comparison of two conv outputs, padded for odd sizes),
written as multiplications; sparsr runs that only as its `smsr_module` op.
Input and output on 0..255.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import smsr_reference as ref


class SMSR(nn.Module):
    def __init__(self, state_dict: Mapping[str, np.ndarray], masks: bool = False):
        super().__init__()
        # A plain dict, not buffers: the keys have dots, and export records the
        # tensors as constants either way.
        self.sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in
                   state_dict.items()}
        self.masks = masks

    def forward(self, x):
        sd = self.sd
        x0 = F.conv2d(x, sd["sub_mean.weight"], sd["sub_mean.bias"])
        h = F.relu(F.conv2d(x0, sd["head.0.weight"], sd["head.0.bias"], padding=1))
        h = F.conv2d(h, sd["head.2.weight"], sd["head.2.bias"], padding=1)
        features, outs = h, []
        for k in range(ref.NUM_SMM):
            p = f"body.{k}."
            if self.masks:
                mask = ref.spatial_mask(sd, p, features)
            else:
                mask = torch.ones_like(features[:, :1])
            out = ref.sparse_mask_block(sd, p + "body.", features, mask)
            features = ref.channel_attention(sd, p + "ca.", out) + features
            outs.append(features)
        y = F.relu(F.conv2d(torch.cat(outs, 1), sd["collect.0.weight"], sd["collect.0.bias"]))
        y = F.conv2d(y, sd["collect.2.weight"], sd["collect.2.bias"], padding=1) + h
        y = F.pixel_shuffle(F.conv2d(y, sd["tail.0.weight"], sd["tail.0.bias"], padding=1),
                            ref.SCALE)
        y = y + F.interpolate(x0, scale_factor=ref.SCALE, mode="bicubic", align_corners=False)
        return F.conv2d(y, sd["add_mean.weight"], sd["add_mean.bias"])
