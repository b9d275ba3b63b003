"""IMDN (Zheng222/IMDN model/architecture.py, model/block.py), written from its
definition. Parameter names follow the authors' state_dict (after ``module.``
is stripped); input and output on 0..1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import conv

SLOPE = 0.05


def channel_std(x):
    """Population standard deviation per channel, as block.stdv_channels."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()


class CCALayer(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                                     nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(channel_std(x) + x.mean(dim=(2, 3), keepdim=True))


class IMDModule(nn.Module):
    def __init__(self, nf: int, dc: int, hidden: int):
        super().__init__()
        self.split_sizes = (dc, nf - dc)
        self.c1 = conv(nf, nf, 3)
        self.c2 = conv(nf - dc, nf, 3)
        self.c3 = conv(nf - dc, nf, 3)
        self.c4 = conv(nf - dc, dc, 3)
        self.c5 = conv(4 * dc, nf, 1)
        self.cca = CCALayer(4 * dc, hidden)

    def forward(self, x):
        d1, r = torch.split(F.leaky_relu(self.c1(x), SLOPE), self.split_sizes, 1)
        d2, r = torch.split(F.leaky_relu(self.c2(r), SLOPE), self.split_sizes, 1)
        d3, r = torch.split(F.leaky_relu(self.c3(r), SLOPE), self.split_sizes, 1)
        out = torch.cat([d1, d2, d3, self.c4(r)], 1)
        return self.c5(self.cca(out)) + x


class IMDN(nn.Module):
    def __init__(self, nf: int = 64, blocks: int = 6, distilled: int = 16, cca_channels: int = 4,
                 scale: int = 4):
        super().__init__()
        self.blocks = blocks
        self.fea_conv = conv(3, nf, 3)
        for i in range(1, blocks + 1):
            self.add_module(f"IMDB{i}", IMDModule(nf, distilled, cca_channels))
        self.c = nn.Sequential(conv(nf * blocks, nf, 1), nn.LeakyReLU(SLOPE))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x):
        fea = self.fea_conv(x)
        outs, h = [], fea
        for i in range(1, self.blocks + 1):
            h = getattr(self, f"IMDB{i}")(h)
            outs.append(h)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, 1))) + fea)
