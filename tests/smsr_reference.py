"""An independent PyTorch reference of SMSR x2 inference (Wang et al., CVPR 2021).

It reads the authors' state_dict directly and computes what their released
inference code computes, written with masks instead of gathers so that it is
easy to check against the paper:

* each sparse mask module (SMM) predicts a binary spatial mask ``m`` from its
  input; each of its four 3x3 convs has binary channel masks that mark every
  output channel *dense* (computed everywhere) or *sparse* (computed only where
  ``m`` is set, zero elsewhere);
* a layer's dense outputs are ``conv(W[D_out, D_in], x) + m * conv(W[D_out, S_in], x)``
  and its sparse outputs ``m * conv(W[S_out, :], x)``, sparse inputs being zero
  where ``m`` is not set; ``mode="dense"`` sets ``m = 1`` everywhere, which is the
  plain dense network.

This module is test/tool code: it imports torch, the sparsr runtime must not.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

NUM_SMM = 5
NUM_LAYERS = 4
SCALE = 2


def load_official_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """Loads the authors' SMSR x2 checkpoint (a legacy torch pickle of a state_dict)."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{path}: expected a state_dict, got {type(state_dict).__name__}")
    missing = [key for key in ("head.0.weight", "tail.0.weight", "body.0.body.ch_mask", "collect.0.weight")
               if key not in state_dict]
    if missing:
        raise KeyError(f"{path}: not an SMSR state_dict, missing {missing}")
    return OrderedDict((key, value.float()) for key, value in state_dict.items())


def channel_masks(ch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense, sparse) float masks of shape (NUM_LAYERS, C) from a (1, C, L, 2) ``ch_mask``.

    Inference rounds the softmax over the last axis: column 0 marks a dense
    channel, column 1 a sparse one.
    """
    hard = ch_mask.float().softmax(dim=3).round()[0]  # (C, L, 2)
    return hard[..., 0].t().contiguous(), hard[..., 1].t().contiguous()


def spatial_mask(sd: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The (1, 1, H, W) float spatial mask of one SMM; pixels the mask branch does not reach are 0."""
    y = F.relu(F.conv2d(x, sd[prefix + "spa_mask.0.weight"], sd[prefix + "spa_mask.0.bias"], padding=1))
    y = F.avg_pool2d(y, 2)
    y = F.relu(F.conv2d(y, sd[prefix + "spa_mask.3.weight"], sd[prefix + "spa_mask.3.bias"], padding=1))
    y = F.conv_transpose2d(y, sd[prefix + "spa_mask.5.weight"], sd[prefix + "spa_mask.5.bias"],
                           stride=2, padding=1, output_padding=1)
    important = (y[:, 1:2] > y[:, 0:1]).float()
    # For odd H or W the pooled branch yields a map one pixel short: the rest is unimportant.
    height, width = x.shape[2], x.shape[3]
    return F.pad(important, [0, width - important.shape[3], 0, height - important.shape[2]])


def sparse_mask_block(sd: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """The SMB: four 3x3 sparse mask convs (ReLU each) and the 1x1 collect over all four."""
    dense_out, sparse_out = channel_masks(sd[prefix + "ch_mask"])
    channels = x.shape[1]
    dense_in = torch.ones(channels)  # layer 0 reads the (dense) SMM input
    sparse_in = torch.zeros(channels)
    features = x
    outputs = []
    for layer in range(NUM_LAYERS):
        weight = sd[f"{prefix}body.{layer}.weight"]
        from_dense = F.conv2d(features * dense_in.view(1, -1, 1, 1), weight, padding=1)
        from_sparse = F.conv2d(features * sparse_in.view(1, -1, 1, 1), weight, padding=1)
        d = dense_out[layer].view(1, -1, 1, 1)
        s = sparse_out[layer].view(1, -1, 1, 1)
        # dense outputs: d2d everywhere, s2d only at important pixels;
        # sparse outputs: d2s + s2s at important pixels, zero elsewhere.
        features = F.relu(d * (from_dense + mask * from_sparse) + s * mask * (from_dense + from_sparse))
        outputs.append(features)
        dense_in, sparse_in = dense_out[layer], sparse_out[layer]
    return F.conv2d(torch.cat(outputs, dim=1), sd[prefix + "collect.weight"], sd[prefix + "collect.bias"])


def channel_attention(sd: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    y = x.mean(dim=(2, 3), keepdim=True)
    y = F.relu(F.conv2d(y, sd[prefix + "conv_du.0.weight"], sd[prefix + "conv_du.0.bias"]))
    y = torch.sigmoid(F.conv2d(y, sd[prefix + "conv_du.2.weight"], sd[prefix + "conv_du.2.bias"]))
    return x * y


@torch.no_grad()
def reference_forward(state_dict: Mapping[str, torch.Tensor], img_uint8_hwc: np.ndarray,
                      mode: str = "mask") -> tuple[np.ndarray, list[np.ndarray]]:
    """Runs SMSR x2 on one uint8 (H, W, 3) image.

    Returns the float32 (2H, 2W, 3) output on 0..255 before clamping/rounding and
    the five bool (H, W) spatial masks (all True in ``mode="dense"``).
    """
    if mode not in ("mask", "dense"):
        raise ValueError(f"mode must be 'mask' or 'dense', got {mode!r}")
    img = np.asarray(img_uint8_hwc)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    sd = state_dict
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    x0 = F.conv2d(x, sd["sub_mean.weight"].float(), sd["sub_mean.bias"].float())

    h = F.relu(F.conv2d(x0, sd["head.0.weight"], sd["head.0.bias"], padding=1))
    h = F.conv2d(h, sd["head.2.weight"], sd["head.2.bias"], padding=1)

    features = h
    smm_outputs = []
    masks = []
    for k in range(NUM_SMM):
        prefix = f"body.{k}."
        if mode == "mask":
            mask = spatial_mask(sd, prefix, features)
        else:
            mask = torch.ones(1, 1, features.shape[2], features.shape[3])
        masks.append(mask[0, 0].numpy() > 0.5)
        out = sparse_mask_block(sd, prefix + "body.", features, mask)
        features = channel_attention(sd, prefix + "ca.", out) + features
        smm_outputs.append(features)

    y = F.relu(F.conv2d(torch.cat(smm_outputs, dim=1), sd["collect.0.weight"], sd["collect.0.bias"]))
    y = F.conv2d(y, sd["collect.2.weight"], sd["collect.2.bias"], padding=1) + h
    y = F.pixel_shuffle(F.conv2d(y, sd["tail.0.weight"], sd["tail.0.bias"], padding=1), SCALE)
    y = y + F.interpolate(x0, scale_factor=SCALE, mode="bicubic", align_corners=False)
    y = F.conv2d(y, sd["add_mean.weight"], sd["add_mean.bias"])
    out = y[0].permute(1, 2, 0).contiguous().numpy().astype(np.float32, copy=False)
    return out, masks
