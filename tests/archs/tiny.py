"""Tiny graphs of several architectures from random weights, for the tools' tests:
CARN-M-like (group convs, cascades), RFDN-like (ESA: a stride-2 conv, max pool,
bilinear resize, sigmoid gate; 10 and 5 channels, which M = 4 does not divide)
and SMSR (sparse mask modules with mixed dense / sparse channels). Each is built
by sparsr's importer from a state_dict, as a converted checkpoint is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparsr import checkpoint
from sparsr.importers import pth
from sparsr.ops.smsr import module_shapes

from .carn_m import CARNM
from .checks import random_state
from .rfdn import RFDN

TINY = ("carn_m", "rfdn", "smsr")


def smsr_state(seed: int = 0, n_feats: int = 16, n_blocks: int = 2, n_layers: int = 4,
               scale: int = 2) -> dict[str, np.ndarray]:
    """Random SMSR weights: channel-mask logits that make about half of every
    layer's channels dense, a spatial mask branch that marks part of the pixels."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    sd = {"sub_mean.weight": np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1),
          "sub_mean.bias": np.array([-114.4, -111.5, -103.0], np.float32),
          "add_mean.weight": np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1),
          "add_mean.bias": np.array([114.4, 111.5, 103.0], np.float32),
          "head.0.weight": w(n_feats, 3, 3, 3) / 40, "head.0.bias": w(n_feats) * 0.1,
          "head.2.weight": w(n_feats, n_feats, 3, 3), "head.2.bias": w(n_feats) * 0.1,
          "collect.0.weight": w(n_feats, n_feats * n_blocks, 1, 1),
          "collect.0.bias": w(n_feats) * 0.1,
          "collect.2.weight": w(n_feats, n_feats, 3, 3), "collect.2.bias": w(n_feats) * 0.1,
          "tail.0.weight": w(3 * scale * scale, n_feats, 3, 3) * 20,
          "tail.0.bias": w(3 * scale * scale) * 0.1}
    for k in range(n_blocks):
        for role, shape in module_shapes(n_feats, n_layers).items():
            sd[f"body.{k}.{role}"] = w(*shape) if len(shape) > 1 else w(*shape) * 0.1
        sd[f"body.{k}.body.ch_mask"] = (rng.standard_normal((1, n_feats, n_layers, 2)) * 2
                                        ).astype(np.float32)
        sd[f"body.{k}.spa_mask.5.bias"] = np.array([0.0, 0.0], np.float32)
    return sd


def state_dict(name: str, seed: int = 0) -> tuple[dict[str, np.ndarray], int]:
    """(random state_dict, scale) of a tiny network."""
    if name == "carn_m":
        net = CARNM(feat=16, group=4)
        sd = random_state(net, seed, gain=0.7)
        # One upsampler branch, as a single-scale CARN-M checkpoint has it.
        return {k.replace("upsample.up2.", "upsample.up."): v for k, v in sd.items()
                if not k.startswith(("upsample.up3.", "upsample.up4."))}, 2
    if name == "rfdn":
        net = RFDN(nf=10, blocks=2, distilled=5, esa_channels=4, scale=2)
        return random_state(net, seed, gain=0.7), 2
    if name == "smsr":
        return smsr_state(seed), 2
    raise ValueError(f"no tiny network {name!r} (one of {TINY})")


def build(name: str, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """(model description, tensors) of a tiny network, from sparsr's importer."""
    sd, scale = state_dict(name, seed)
    arch, hyper = pth.detect(sd)
    return arch.build(sd, hyper, scale)


def save(name: str, path: Path, seed: int = 0) -> Path:
    description, tensors = build(name, seed)
    checkpoint.save(path, description, tensors, {"tiny": name})
    return path


def image(seed: int, h: int = 24, w: int = 28) -> np.ndarray:
    """A smooth random uint8 (h, w, 3) image (texture at several scales)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((h // 4 + 2, w // 4 + 2, 3))
    up = np.kron(coarse, np.ones((4, 4, 1)))[:h, :w]
    img = 0.6 * up + 0.4 * rng.random((h, w, 3))
    return np.ascontiguousarray((img * 255).clip(0, 255).astype(np.uint8))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None]
