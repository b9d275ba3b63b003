"""SPAN (Amazingren/NTIRE2024_ESR models/team38_SPAN.py, SPAN30 with SPAB1 blocks),
written from its eval path: every Conv3XC is its re-parameterised ``eval_conv``.
Input and output on 0..1 (no mean added back, no clamp)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv

RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0


class Conv3XC(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.eval_conv = conv(cin, cout, 3)

    def forward(self, x):
        return self.eval_conv(x)


class SPAB1(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.c1_r = Conv3XC(nf, nf)
        self.c2_r = Conv3XC(nf, nf)
        self.c3_r = Conv3XC(nf, nf)

    def forward(self, x):
        # The authors' SiLU is in place (nn.SiLU(inplace=True) on out1), so the
        # "out1" a block returns to SPAN30's concatenation is already activated.
        out1 = F.silu(self.c1_r(x))
        out3 = self.c3_r(F.silu(self.c2_r(out1)))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPAN(nn.Module):
    def __init__(self, nf: int = 28, scale: int = 4):
        super().__init__()
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = Conv3XC(3, nf)
        for i in range(1, 7):
            self.add_module(f"block_{i}", SPAB1(nf))
        self.conv_cat = conv(4 * nf, nf, 1)
        self.conv_2 = Conv3XC(nf, nf)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x):
        feature = self.conv_1((x - self.mean) * IMG_RANGE)
        h = feature
        for i in range(1, 7):
            h, out1 = getattr(self, f"block_{i}")(h)
            if i == 1:
                first = h
        out = self.conv_cat(torch.cat([feature, self.conv_2(h), first, out1], 1))
        return self.upsampler(out)
