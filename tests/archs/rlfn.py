"""RLFN (ofsoundof/NTIRE2022_ESR models/team04_rlfn.py, RLFN_cut), written from
its definition. Parameter names follow the authors' state_dict; 0..255."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .common import conv
from .rfdn import ESA

SLOPE = 0.05


class RLFB(nn.Module):
    def __init__(self, nf: int, mid: int, f: int):
        super().__init__()
        self.c1_r = conv(nf, mid, 3)
        self.c2_r = conv(mid, mid, 3)
        self.c3_r = conv(mid, nf, 3)
        self.c5 = conv(nf, nf, 1)
        self.esa = ESA(nf, f, range_convs=False)

    def forward(self, x):
        y = F.leaky_relu(self.c1_r(x), SLOPE)
        y = F.leaky_relu(self.c2_r(y), SLOPE)
        y = F.leaky_relu(self.c3_r(y), SLOPE)
        return self.esa(self.c5(y + x))


class RLFN(nn.Module):
    def __init__(self, nf: int = 46, mid: int = 48, blocks: int = 4, esa_channels: int = 16,
                 scale: int = 4):
        super().__init__()
        self.blocks = blocks
        self.fea_conv = conv(3, nf, 3)
        for i in range(1, blocks + 1):
            self.add_module(f"B{i}", RLFB(nf, mid, esa_channels))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x):
        fea = self.fea_conv(x)
        h = fea
        for i in range(1, self.blocks + 1):
            h = getattr(self, f"B{i}")(h)
        return self.upsampler(self.LR_conv(h) + fea)
