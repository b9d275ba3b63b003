"""DnCNN as cszn/KAIR defines it (models/network_dncnn.py, act_mode 'R'): the
flattened Sequential gives the same parameter names (model.0, model.2, ...)."""

from torch import nn


class DnCNN(nn.Module):
    def __init__(self, in_nc=1, out_nc=1, nc=64, nb=17):
        super().__init__()
        layers = [nn.Conv2d(in_nc, nc, 3, 1, 1), nn.ReLU(inplace=True)]
        for _ in range(nb - 2):
            layers += [nn.Conv2d(nc, nc, 3, 1, 1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(nc, out_nc, 3, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.model(x)     # the network predicts the noise
