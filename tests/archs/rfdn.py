"""RFDN (ofsoundof/NTIRE2022_ESR models/rfdn_baseline), written from its definition.
Parameter names follow the authors' state_dict; input and output on 0..255."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv

SLOPE = 0.05


class ESA(nn.Module):
    """Enhanced spatial attention; `range_convs` selects RFDN's three pooled-map
    convs (conv_max, conv3, conv3_) over RLFN's single conv3."""

    def __init__(self, nf: int, f: int, range_convs: bool = True):
        super().__init__()
        self.range_convs = range_convs
        self.conv1 = conv(nf, f, 1)
        self.conv_f = conv(f, f, 1)
        if range_convs:
            self.conv_max = conv(f, f, 3)
        self.conv2 = conv(f, f, 3, stride=2, padding=0)
        self.conv3 = conv(f, f, 3)
        if range_convs:
            self.conv3_ = conv(f, f, 3)
        self.conv4 = conv(f, nf, 1)

    def forward(self, x):
        reduced = self.conv1(x)
        v = F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3)
        if self.range_convs:
            v = F.relu(self.conv_max(v))
            v = self.conv3_(F.relu(self.conv3(v)))
        else:
            v = self.conv3(v)
        v = F.interpolate(v, (x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(v + self.conv_f(reduced)))


class RFDB(nn.Module):
    def __init__(self, nf: int, dc: int, f: int):
        super().__init__()
        for j in (1, 2, 3):
            self.add_module(f"c{j}_d", conv(nf, dc, 1))
            self.add_module(f"c{j}_r", conv(nf, nf, 3))
        self.c4 = conv(nf, dc, 3)
        self.c5 = conv(4 * dc, nf, 1)
        self.esa = ESA(nf, f)

    def forward(self, x):
        act = lambda v: F.leaky_relu(v, SLOPE)  # noqa: E731
        d1 = act(self.c1_d(x))
        r1 = act(self.c1_r(x) + x)
        d2 = act(self.c2_d(r1))
        r2 = act(self.c2_r(r1) + r1)
        d3 = act(self.c3_d(r2))
        r3 = act(self.c3_r(r2) + r2)
        r4 = act(self.c4(r3))
        return self.esa(self.c5(torch.cat([d1, d2, d3, r4], 1)))


class RFDN(nn.Module):
    def __init__(self, nf: int = 50, blocks: int = 4, distilled: int = 25,
                 esa_channels: int = 12, scale: int = 4):
        super().__init__()
        self.blocks = blocks
        self.fea_conv = conv(3, nf, 3)
        for i in range(1, blocks + 1):
            self.add_module(f"B{i}", RFDB(nf, distilled, esa_channels))
        self.c = nn.Sequential(conv(nf * blocks, nf, 1), nn.LeakyReLU(SLOPE))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x):
        fea = self.fea_conv(x)
        outs, h = [], fea
        for i in range(1, self.blocks + 1):
            h = getattr(self, f"B{i}")(h)
            outs.append(h)
        y = self.LR_conv(self.c(torch.cat(outs, 1))) + fea
        return self.upsampler(y)
