"""Loading sparsr checkpoints and running them on images."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from . import _core, checkpoint
from .errors import CheckpointError
from .image import prepare
from .metrics import quantize
from .smsr import MODES, Forward, SmsrNetwork

# Architecture name in a checkpoint -> the class that runs it.
ARCHITECTURES = {SmsrNetwork.architecture: SmsrNetwork}


class Model:
    """A loaded super-resolution network.

    >>> m = sparsr.load("smsr_x2.pt")
    >>> big = m.upscale(small)          # PIL image or (H, W, 3) uint8 array
    """

    def __init__(self, network: SmsrNetwork, description: dict, metadata: dict, path: str):
        self._net = network
        self.description = description
        self.metadata = metadata
        self.path = path

    @property
    def scale(self) -> int:
        return self._net.scale

    @property
    def architecture(self) -> str:
        return self._net.architecture

    def forward(self, img: Any, mode: str = "mask") -> Forward:
        """Runs the network on an image and returns the unrounded output, the
        spatial masks and the MACs each layer executed."""
        prepared = prepare(img, self.scale)
        return self._net.forward(prepared.rgb, mode)

    def upscale(self, img: Any, mode: str = "mask") -> Any:
        """Upscales a PIL image or an (H, W, 3) / (H, W) uint8 array by the model's
        scale; returns the same kind. mode="dense" ignores the sparse masks
        (every pixel and channel computed)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        prepared = prepare(img, self.scale)
        out = self._net.forward(prepared.rgb, mode).output
        return prepared.restore(quantize(out))

    def info(self, input_size: tuple[int, int] | None = None, image: Any = None) -> dict:
        """Scale, layers with their weight sparsity and kernels, and MACs.

        input_size=(h, w) adds the dense-mode MACs at that input size; image=...
        runs the network on that image in mask mode and adds the MACs actually
        executed, per layer and in total."""
        layers = self._net.layer_table()
        params = sum(r["params"] for r in layers)
        nonzeros = sum(r["nonzeros"] for r in layers)
        result = {
            "path": self.path,
            "architecture": self.architecture,
            "scale": self.scale,
            "isa": self._net.isa or _core.active_isa(),
            "threads": _core.num_threads(),
            "conv_params": params,
            "conv_nonzeros": nonzeros,
            "layers": layers,
        }
        if input_size is not None:
            h, w = input_size
            result["input_size"] = [h, w]
            result["dense_macs"] = self._net.dense_macs(h, w)
        if image is not None:
            fwd = self.forward(image, "mask")
            h, w = fwd.masks[0].shape if fwd.masks else prepare(image, self.scale).rgb.shape[:2]
            result["input_size"] = [h, w]
            result["dense_macs"] = self._net.dense_macs(h, w)
            result["executed_macs"] = fwd.macs
            result["mask_density"] = [float(m.mean()) for m in fwd.masks]
            result["executed_macs_per_layer"] = {k: v.macs for k, v in fwd.layers.items()}
        return result


def load(path: str | os.PathLike, isa: str | None = None) -> Model:
    """Loads a sparsr checkpoint. isa forces a kernel level ("scalar", "avx2",
    "avx512") for this model; by default the best this CPU supports (lowered by
    the SPARSR_ISA environment variable)."""
    path = os.fspath(path)
    description, tensors, metadata = checkpoint.load(path)
    try:
        tensors = checkpoint.decode_sparse(tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    arch = description.get("architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported "
                              f"(supported: {sorted(ARCHITECTURES)})")
    if isa is not None and not _core.isa_supported(isa):
        raise ValueError(f"this CPU does not support {isa!r} (best: {_core.detected_isa()})")
    try:
        network = ARCHITECTURES[arch](description, tensors, isa)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return Model(network, description, metadata, path)
