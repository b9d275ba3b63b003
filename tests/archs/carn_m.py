"""CARN-M as nmhkahn/CARN-pytorch defines it (carn/model/carn_m.py, ops.py),
same parameter names; forward(x, scale) picks the upsampler branch."""

import math

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Module):
    def __init__(self, sign):
        super().__init__()
        self.shifter = nn.Conv2d(3, 3, 1)
        self.shifter.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.shifter.bias.data = sign * torch.tensor(MEAN)

    def forward(self, x):
        return self.shifter(x)


class ConvReLU(nn.Module):           # ops.BasicBlock: body = (conv, ReLU)
    def __init__(self, cin, cout, k=1, pad=0):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, k, 1, pad), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.body(x)


class EResidualBlock(nn.Module):
    def __init__(self, feat, group):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(feat, feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
            nn.Conv2d(feat, feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
            nn.Conv2d(feat, feat, 1, 1, 0))

    def forward(self, x):
        return F.relu(self.body(x) + x)


class Upsampler(nn.Module):          # ops._UpsampleBlock
    def __init__(self, feat, scale, group):
        super().__init__()
        if scale == 3:
            layers = [nn.Conv2d(feat, 9 * feat, 3, 1, 1, groups=group), nn.ReLU(inplace=True),
                      nn.PixelShuffle(3)]
        else:
            layers = []
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(feat, 4 * feat, 3, 1, 1, groups=group),
                           nn.ReLU(inplace=True), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


class MultiScaleUpsampler(nn.Module):
    def __init__(self, feat, group):
        super().__init__()
        self.up2 = Upsampler(feat, 2, group)
        self.up3 = Upsampler(feat, 3, group)
        self.up4 = Upsampler(feat, 4, group)

    def forward(self, x, scale):
        return getattr(self, f"up{scale}")(x)


def cascade(x, units, mixers):
    parts, o = [x], x
    for unit, mixer in zip(units, mixers):
        parts.append(unit(o))
        o = mixer(torch.cat(parts, dim=1))
    return o


class Block(nn.Module):
    def __init__(self, feat, group):
        super().__init__()
        self.b1 = EResidualBlock(feat, group)     # applied three times, shared weights
        self.c1 = ConvReLU(2 * feat, feat)
        self.c2 = ConvReLU(3 * feat, feat)
        self.c3 = ConvReLU(4 * feat, feat)

    def forward(self, x):
        return cascade(x, [self.b1] * 3, [self.c1, self.c2, self.c3])


class CARNM(nn.Module):
    def __init__(self, feat=64, group=4):
        super().__init__()
        self.sub_mean = MeanShift(-1)
        self.add_mean = MeanShift(1)
        self.entry = nn.Conv2d(3, feat, 3, 1, 1)
        self.b1, self.b2, self.b3 = (Block(feat, group) for _ in range(3))
        self.c1 = ConvReLU(2 * feat, feat)
        self.c2 = ConvReLU(3 * feat, feat)
        self.c3 = ConvReLU(4 * feat, feat)
        self.upsample = MultiScaleUpsampler(feat, group)
        self.exit = nn.Conv2d(feat, 3, 3, 1, 1)

    def forward(self, x, scale):
        x = self.entry(self.sub_mean(x))
        x = cascade(x, [self.b1, self.b2, self.b3], [self.c1, self.c2, self.c3])
        return self.add_mean(self.exit(self.upsample(x, scale)))
