"""MSRResNet as xinntao/BasicSR defines it (basicsr/archs/srresnet_arch.py),
same parameter names."""

import torch.nn.functional as F
from torch import nn


class ResidualBlockNoBN(nn.Module):
    def __init__(self, feat):
        super().__init__()
        self.conv1 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.conv2 = nn.Conv2d(feat, feat, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    def __init__(self, num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        if upscale == 4:
            self.upconv1 = nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1)
        else:
            self.upconv1 = nn.Conv2d(num_feat, upscale * upscale * num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x):
        lrelu = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        y = self.body(lrelu(self.conv_first(x)))
        if self.upscale == 4:
            y = lrelu(F.pixel_shuffle(self.upconv1(y), 2))
            y = lrelu(F.pixel_shuffle(self.upconv2(y), 2))
        else:
            y = lrelu(F.pixel_shuffle(self.upconv1(y), self.upscale))
        y = self.conv_last(lrelu(self.conv_hr(y)))
        return y + F.interpolate(x, scale_factor=self.upscale, mode="bilinear",
                                 align_corners=False)
