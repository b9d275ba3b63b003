"""EDSR and RCAN as sanghyun-son/EDSR-PyTorch defines them (src/model/edsr.py,
rcan.py, common.py), same parameter names; MeanShift with the DIV2K means."""

import math

import torch
from torch import nn

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class MeanShift(nn.Conv2d):
    def __init__(self, rgb_range, sign=-1, std=(1.0, 1.0, 1.0)):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(DIV2K_MEAN) / std
        for p in self.parameters():
            p.requires_grad = False


def conv(cin, cout, k):
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class Upsampler(nn.Sequential):
    def __init__(self, scale, feat):
        layers = []
        if scale == 3:
            layers += [conv(feat, 9 * feat, 3), nn.PixelShuffle(3)]
        else:
            for _ in range(int(math.log2(scale))):
                layers += [conv(feat, 4 * feat, 3), nn.PixelShuffle(2)]
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, feat, k, res_scale):
        super().__init__()
        self.body = nn.Sequential(conv(feat, feat, k), nn.ReLU(True), conv(feat, feat, k))
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x) * self.res_scale + x


class EDSR(nn.Module):
    def __init__(self, n_resblocks=16, n_feats=64, scale=2, res_scale=1.0, rgb_range=255,
                 n_colors=3, kernel_size=3):
        super().__init__()
        k = kernel_size
        self.sub_mean = MeanShift(rgb_range)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(conv(n_colors, n_feats, k))
        self.body = nn.Sequential(*[ResBlock(n_feats, k, res_scale) for _ in range(n_resblocks)],
                                  conv(n_feats, n_feats, k))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, n_colors, k))

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))


class CALayer(nn.Module):
    def __init__(self, feat, reduction):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(feat, feat // reduction, 1), nn.ReLU(True),
                                     nn.Conv2d(feat // reduction, feat, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class RCAB(nn.Module):
    def __init__(self, feat, k, reduction):
        super().__init__()
        self.body = nn.Sequential(conv(feat, feat, k), nn.ReLU(True), conv(feat, feat, k),
                                  CALayer(feat, reduction))

    def forward(self, x):
        return self.body(x) + x


class ResidualGroup(nn.Module):
    def __init__(self, feat, k, reduction, n_resblocks):
        super().__init__()
        self.body = nn.Sequential(*[RCAB(feat, k, reduction) for _ in range(n_resblocks)],
                                  conv(feat, feat, k))

    def forward(self, x):
        return self.body(x) + x


class RCAN(nn.Module):
    def __init__(self, n_resgroups=10, n_resblocks=20, n_feats=64, reduction=16, scale=2,
                 rgb_range=255, n_colors=3, kernel_size=3):
        super().__init__()
        k = kernel_size
        self.sub_mean = MeanShift(rgb_range)
        self.head = nn.Sequential(conv(n_colors, n_feats, k))
        self.body = nn.Sequential(
            *[ResidualGroup(n_feats, k, reduction, n_resblocks) for _ in range(n_resgroups)],
            conv(n_feats, n_feats, k))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), conv(n_feats, n_colors, k))
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x):
        x = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(self.body(x) + x))
