"""Loading sparsr checkpoints and running their graphs on images."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from . import _core, checkpoint, env
from .errors import CheckpointError, ImageError
from .executor import PROBE, Executor, Result, check_input_size, choose_execution
from .graph import IO, LOAD_PRECISIONS, Graph, LayerChoices, check_layers
from .image import prepare

MODES = ("mask", "dense")

# BT.601 YCbCr without offsets, as the Y-channel networks here were trained on
# (FSRCNN-pytorch utils.convert_rgb_to_ycbcr; Y has +16/255 of the range).
_Y = np.array([64.738, 129.057, 25.064]) / 256.0
_CB = np.array([-37.945, -74.494, 112.439]) / 256.0
_CR = np.array([112.439, -94.154, -18.285]) / 256.0


@dataclass
class LayerStats:
    """MACs one layer executed in one forward pass."""
    name: str
    macs: int = 0
    dense_macs: int = 0


@dataclass
class Forward:
    """The result of one forward pass."""
    output: np.ndarray          # (sH, sW, 3) float32 on 0..255, before clamping and rounding
    masks: list[np.ndarray]     # spatial masks of SMSR modules (all True in dense mode)
    layers: dict[str, LayerStats]
    kept: dict | None = None    # values kept for restarts (Model.stages)

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.layers.values())

    @property
    def dense_macs(self) -> int:
        return sum(s.dense_macs for s in self.layers.values())


def _ieee_arithmetic(fn):
    """fn without numpy's floating-point warnings: NaN and overflow in a
    network's values (NaN weights loaded with allow_nonfinite, activations
    that overflow float32) follow IEEE arithmetic, as in the kernels."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return run


class Model:
    """A loaded network.

    >>> m = sparsr.load("smsr_x2.pt")
    >>> big = m.upscale(small)          # PIL image or (H, W, 3) uint8 array
    """

    def __init__(self, description: dict, tensors: dict[str, np.ndarray], metadata: dict,
                 path: str, isa: str | None = None, max_memory: int | None = None, *,
                 allow_nonfinite: bool = False, tile: int | None = None,
                 precision: str = "auto"):
        self.description = description
        self.metadata = metadata
        self.path = path
        self.io = IO.from_dict(description.get("io"))
        self.graph = Graph.from_dict(description.get("graph"))
        layers = check_layers(description.get("layers", {}))
        self.tensors = tensors
        self.isa = isa
        self.max_memory = max_memory
        self.tile = tile
        self.precision = precision
        layers = LayerChoices(layers, precision)
        self._executor = Executor(self.graph, tensors, layers, isa, self.io.channels,
                                  allow_nonfinite=allow_nonfinite)
        _check_probe_shapes(self._executor, self.io)

    @property
    def scale(self) -> int:
        return self.io.scale

    @property
    def architecture(self) -> str:
        return str(self.description.get("architecture", "graph"))

    # -- running ----------------------------------------------------------------------

    def process(self, rgb: np.ndarray, mode: str = "mask", *, tile: int | None = None,
                progress=None) -> np.ndarray:
        """float32 (H, W, 3) RGB on 0..1 -> float32 (sH, sW, 3) on 0..1, not clamped.
        tile: run in bands of that many input rows (see execution()); progress:
        called with the fraction of the work done after each band."""
        rgb = np.asarray(rgb, dtype=np.float32)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ImageError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
        return self._run(rgb, 1.0, mode, tile=tile, progress=progress).output

    def execution(self, height: int, width: int, tile: int | None = None):
        """How an input of this size runs: whole, or in bands of input rows
        (Execution.band_rows) when its features would take more than the
        memory budget (max_memory, default executor.DEFAULT_BUDGET), or when
        tile (else the model's tile) forces bands of that many rows. Bands give
        the whole-image result, up to the order of float sums."""
        return choose_execution(self._executor, height, width, self.max_memory,
                                tile if tile is not None else self.tile)

    def _execute(self, x, mode: str, tile: int | None, keep=(), cache=None,
                 start=None, progress=None) -> Result:
        if keep or cache is not None or start is not None:
            # Restarts keep whole-image values: whole-image execution.
            check_input_size(self._executor, x.height, x.width, self.max_memory)
            return self._executor.run(x, mode, keep=keep, cache=cache, start=start)
        ex = self.execution(x.height, x.width, tile)
        if ex.band_rows is None:
            return self._executor.run(x, mode)
        return self._executor.run_bands(x, mode, ex.band_rows, spill=ex.spill,
                                        pool_limit=ex.pool_bytes, progress=progress,
                                        arena_bytes=ex.arena_bytes)

    def run_network(self, planes: np.ndarray, mode: str = "mask", *,
                    tile: int | None = None) -> np.ndarray:
        """The graph alone: float32 (C, H, W) planes on the network's own pixel
        range and colour layout (io) -> its output planes, unconverted."""
        planes = np.ascontiguousarray(planes, dtype=np.float32)
        if planes.ndim != 3 or planes.shape[0] != self.io.channels:
            raise ImageError(f"expected ({self.io.channels}, H, W) planes, got {planes.shape}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        x = _core.Feature.from_numpy(planes).view()
        out = self._execute(x, mode, tile).output
        return np.ascontiguousarray(out.transpose(2, 0, 1)) if isinstance(out, np.ndarray) \
            else out.numpy()

    def forward(self, img: Any, mode: str = "mask", *, cache: Forward | None = None,
                start: str | None = None, keep: Iterable[str] = ()) -> Forward:
        """Runs the network on an image (PIL or uint8 array) and returns the
        unrounded output on 0..255, the spatial masks and the MACs each layer
        executed. keep/cache/start: see stages()."""
        prepared = prepare(img, self.scale)
        return self._run(prepared.rgb, 255.0, mode, keep=keep, cache=cache, start=start)

    def stages(self, img: Any, at: Iterable[str], mode: str = "mask") -> Forward:
        """Runs once and keeps the values live at the start of the nodes `at`,
        so that a tool changing the weights of such a node (or a later one)
        can re-run from there: forward(img, mode, cache=stages, start=node)."""
        return self.forward(img, mode, keep=list(at))

    def upscale(self, img: Any, mode: str = "mask", *, alpha: str = "model",
                outscale: float | None = None, progress=None, tile: int | None = None) -> Any:
        """Upscales a PIL image or a uint8 / uint16 array ((H, W), (H, W, 3) or
        (H, W, 4)) by the model's scale; returns the same kind. mode="dense"
        ignores the sparse masks (every pixel and channel computed); alpha
        "model" or "bicubic" upscales an alpha channel by the network or
        bicubically; outscale resizes the result to that factor of the input;
        progress(done, total) is called as the work goes on; tile runs the
        network in bands of that many input rows (never needed for correctness:
        large images run in bands anyway, see execution())."""
        from .upscale import upscale_image
        return upscale_image(self.with_mode(mode, tile), img, alpha=alpha, outscale=outscale,
                             progress=progress)

    def with_mode(self, mode: str, tile: int | None = None) -> "ModeBound":
        """This model with its run mode (and tile) fixed: `scale` and `process(rgb)`."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return ModeBound(self, mode, tile)

    @_ieee_arithmetic
    def _run(self, rgb: np.ndarray, peak: float, mode: str, keep: Iterable[str] = (),
             cache: Forward | None = None, start: str | None = None,
             tile: int | None = None, progress=None) -> Forward:
        """rgb: (H, W, 3) on 0..peak -> Forward with output on 0..peak."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        h, w = rgb.shape[:2]
        if keep or cache is not None or start is not None:
            check_input_size(self._executor, h, w, self.max_memory)
        else:
            self.execution(h, w, tile)
        io = self.io
        rgb = rgb.astype(np.float32, copy=False)
        chroma = None
        if io.color == "rgb":
            planes = rgb[:, :, ::-1] if io.channel_order == "bgr" else rgb
            planes = planes.transpose(2, 0, 1)
        elif io.color == "y":
            planes = np.tensordot(_Y, rgb, axes=([0], [2]))[None] + 16.0 / 255.0 * peak
            chroma = np.stack([np.tensordot(_CB, rgb, axes=([0], [2])),
                               np.tensordot(_CR, rgb, axes=([0], [2]))])
        else:
            planes = np.tensordot(np.array([0.299, 0.587, 0.114]), rgb, axes=([0], [2]))[None]
        factor = io.range / peak
        planes = np.ascontiguousarray(planes * factor if factor != 1.0 else planes,
                                      dtype=np.float32)
        x = _core.Feature.from_numpy(planes).view()
        del planes
        kept = cache.kept if cache is not None else None
        result = self._execute(x, mode, tile, keep=list(keep), cache=kept, start=start,
                               progress=progress)
        del x
        # (H, W, C): a band run writes it so; the output feature goes at once
        # (at 8K an RGB float copy is 400 MB).
        out = result.output
        if not isinstance(out, np.ndarray):
            out = out.numpy().transpose(1, 2, 0)
        result.output = None
        if factor != 1.0:
            np.divide(out, np.float32(factor), out=out)
        out = self._to_rgb(out, chroma, peak)
        layers = {k: LayerStats(k, v[0], v[1]) for k, v in result.layers.items()}
        return Forward(out, result.masks, layers, result.kept)

    def _to_rgb(self, out: np.ndarray, chroma: np.ndarray | None, peak: float) -> np.ndarray:
        """out: the network output as (H, W, C)."""
        io = self.io
        if io.color == "rgb":
            return np.ascontiguousarray(out[:, :, ::-1] if io.channel_order == "bgr" else out,
                                        dtype=np.float32)
        if io.color == "grey":
            return np.ascontiguousarray(np.repeat(out[:, :, :1], 3, axis=2), dtype=np.float32)
        # Y network: the chroma planes upsampled bicubically beside it.
        s = self.scale
        c = _core.Feature.from_numpy(np.ascontiguousarray(chroma, dtype=np.float32))
        up = _core.Feature(2, c.height * s, c.width * s)
        _core.resize(c.view(), up.view(), "bicubic", False, s, s)
        cb, cr = up.numpy()
        y = out[:, :, 0] - 16.0 / 255.0 * peak
        ycc = np.stack([y, cb, cr], axis=-1).astype(np.float64)
        inverse = np.linalg.inv(np.stack([_Y, _CB, _CR]))
        return np.ascontiguousarray(ycc @ inverse.T, dtype=np.float32)

    # -- weights, for the tools ----------------------------------------------------------

    def conv_weight(self, name: str) -> np.ndarray:
        """The weights of convolution `name` (its weight tensor without .weight)."""
        try:
            return self.tensors[name + ".weight"]
        except KeyError:
            raise KeyError(f"no convolution named {name!r}") from None

    def set_conv_weight(self, name: str, weight: np.ndarray, format: str | None = None) -> None:
        """Replaces one convolution's weights (same shape) and repacks the nodes
        that use them; used by the offline tools to try sparsified weights."""
        old = self.conv_weight(name)
        weight = np.ascontiguousarray(weight, dtype=np.float32)
        if weight.shape != old.shape:
            raise ValueError(f"{name}: weight shape {weight.shape}, expected {old.shape}")
        self.tensors[name + ".weight"] = weight
        if format is not None:
            layers = self.description.setdefault("layers", {})
            layers.setdefault(name, {})["format"] = format
        key = name + ".weight"
        self._executor.rebuild(n.name for n in self.graph.nodes if key in n.params.values())

    def replace_weights(self, tensors: dict[str, np.ndarray],
                        formats: dict[str, str | dict] | None = None) -> None:
        """Replaces graph tensors (same shapes; e.g. trained or pruned weights,
        by their names) and repacks every node that uses one, once. formats:
        {conv: "dense" | "csr" | "bcsr" | "nm" | "sparse", or {"format": ..., "options":
        {...}}}: the layers' new formats (layers not named keep theirs)."""
        new = {}
        for name, value in tensors.items():
            if name not in self.tensors:
                raise KeyError(f"the model has no tensor named {name!r}")
            value = np.ascontiguousarray(value, dtype=np.float32)
            if value.shape != self.tensors[name].shape:
                raise ValueError(f"{name}: shape {value.shape}, expected "
                                 f"{self.tensors[name].shape}")
            new[name] = value
        layers = self.description.setdefault("layers", {})
        touched = set(new)
        for conv, fmt in (formats or {}).items():
            if conv + ".weight" not in self.tensors:
                raise KeyError(f"no convolution named {conv!r}")
            info = dict(fmt) if isinstance(fmt, dict) else {"format": fmt}
            check_layers({conv: info})
            layers[conv] = info
            touched.add(conv + ".weight")
        self.tensors.update(new)
        self._executor.rebuild(n.name for n in self.graph.nodes
                               if touched & set(n.params.values()))

    def run_order(self) -> list[str]:
        """The nodes a run can start at (stages / forward(start=)), in the order
        it reaches them (fusions and split concat convs move some): after a
        layer changed, a run may restart at any of them that comes no later
        than the layer's own node."""
        index = self._executor.plan(PROBE, PROBE).index
        names = [n.name for n in self.graph.nodes if n.name in index]   # a run can start there
        return sorted(names, key=lambda n: index[n])

    def conv_names(self) -> list[str]:
        """Every convolution's name (its weight tensor without .weight), in graph order."""
        names = []
        for n in self.graph.nodes:
            for t in n.params.values():
                if t.endswith(".weight") and self.tensors[t].ndim == 4:
                    names.append(t[:-len(".weight")])
        return list(dict.fromkeys(names))

    def count_zero_skips(self, layer_filter) -> None:
        """Counts the MACs of the layers layer_filter(name) accepts as a zero-skipping
        kernel executes them (nonzero weights only), whatever kernel runs them."""
        for op in self._executor.ops:
            for conv in op.packed_convs():
                if layer_filter(conv.name):
                    conv.skips_zeros = True

    def node_of(self, conv: str) -> str:
        """The graph node that owns convolution `conv`."""
        key = conv + ".weight"
        for n in self.graph.nodes:
            if key in n.params.values():
                return n.name
        raise KeyError(f"no node uses {key!r}")

    # -- reports --------------------------------------------------------------------------

    def layer_table(self) -> list[dict]:
        return self._executor.conv_rows()

    def dense_macs(self, h: int, w: int) -> int:
        return self._executor.dense_macs(h, w)

    def info(self, input_size: tuple[int, int] | None = None, image: Any = None) -> dict:
        """Scale, layers with their weight sparsity and kernels, and MACs.

        input_size=(h, w) adds the dense-mode MACs at that input size; image=...
        runs the network on that image in mask mode and adds the MACs actually
        executed, per layer and in total."""
        layers = self.layer_table()
        result = {
            "path": self.path,
            "architecture": self.architecture,
            "scale": self.scale,
            "io": self.io.to_dict(),
            "isa": self.isa or _core.active_isa(),
            "precision": self.precision,
            **_precision_report(layers, self.isa or _core.active_isa(), self.precision,
                                self.description.get("layers", {})),
            "threads": _core.num_threads(),
            "nodes": len(self.graph.nodes),
            "conv_params": sum(r["params"] for r in layers),
            "conv_nonzeros": sum(r["nonzeros"] for r in layers),
            "layers": layers,
        }
        if input_size is not None:
            h, w = input_size
            result["input_size"] = [h, w]
            result["dense_macs"] = self.dense_macs(h, w)
        if image is not None:
            h, w = prepare(image, self.scale).rgb.shape[:2]
            fwd = self.forward(image, "mask")
            result["input_size"] = [h, w]
            result["dense_macs"] = self.dense_macs(h, w)
            result["executed_macs"] = fwd.macs
            result["mask_density"] = [float(m.mean()) for m in fwd.masks]
            result["executed_macs_per_layer"] = {k: v.macs for k, v in fwd.layers.items()}
        return result


def _precision_report(layers: list[dict], isa: str, precision: str = "auto",
                      stored: dict | None = None) -> dict:
    """How many layers run bf16 and int8, and a note when bf16 or int8 was
    asked for layers that run other kernels (no AVX512_BF16 / AVX512_VNNI at
    the level in use, or a format without such a kernel), or when the load
    asked for int8 and layers have no calibration data (those run their own
    choice, f32 if none: int8_uncalibrated lists them)."""
    report = {f"{p}_layers": sum(r.get("precision") == p for r in layers)
              for p in ("bf16", "int8")}
    notes = []
    for p in ("bf16", "int8"):
        asked = [r for r in layers if r.get("requested_precision") == p]
        fell_back = [r["name"] for r in asked if r.get("precision") != p]
        if fell_back:
            why = (f"level {isa} has no {'AVX512_BF16' if p == 'bf16' else 'AVX512_VNNI'} "
                   "(CPU, SPARSR_ISA or isa=)" if isa not in ("avx512bf16", "amx")
                   else f"no {p} kernel for their format")
            notes.append(f"{p} asked for {len(asked)} layers; {len(fell_back)} run f32 kernels "
                         f"({why}): {_names(fell_back)}")
    if precision == "int8":
        stored = stored or {}
        missing = list(dict.fromkeys(
            r["name"].split("[")[0] for r in layers
            if "int8" not in (stored.get(r["name"].split("[")[0]) or {})))
        if missing:
            report["int8_uncalibrated"] = missing
            notes.append(f"int8 asked for; {len(missing)} of {len(layers)} layers have no int8 "
                         f"calibration (tools/quantize.py) and run their own precision: "
                         f"{_names(missing)}")
    if notes:
        report["precision_note"] = "; ".join(notes)
    return report


def _names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


class ModeBound:
    """A model and a run mode: what the upscaler runs (`scale`, `process`)."""

    reports_progress = True

    def __init__(self, model: Model, mode: str, tile: int | None = None):
        self.model = model
        self.mode = mode
        self.tile = tile
        self.scale = model.scale

    def process(self, rgb: np.ndarray, progress=None) -> np.ndarray:
        return self.model.process(rgb, self.mode, tile=self.tile, progress=progress)


# Bounds on every value of a graph at the PROBE x PROBE input it is checked at
# when loaded: sides up to 64 times the input (an x16 network's output is 16
# times), at most 65536 channels and 2^28 floats (1 GiB). A graph beyond them
# is a corrupted one, refused before an image makes it allocate.
MAX_SIDE_FACTOR = 64
MAX_CHANNELS = 1 << 16
MAX_VALUE_FLOATS = 1 << 28


def _check_probe_shapes(executor: Executor, io: IO) -> None:
    """CheckpointError when a value's shape at the probe input is out of
    bounds, or the output is not io.scale times the input in io's channels."""
    plan = executor.plan(PROBE, PROBE)
    for name, (c, h, w) in plan.shapes.items():
        if (c > MAX_CHANNELS or max(h, w) > MAX_SIDE_FACTOR * PROBE
                or c * h * w > MAX_VALUE_FLOATS):
            raise CheckpointError(f"value {name!r:.80} is ({c}, {h}, {w}) at a {PROBE}x{PROBE} "
                                  f"input: beyond {MAX_CHANNELS} channels, sides of "
                                  f"{MAX_SIDE_FACTOR}x the input or {MAX_VALUE_FLOATS} floats")
    want = (io.channels, PROBE * io.scale, PROBE * io.scale)
    got = plan.shapes[executor.graph.outputs[0]]
    if tuple(got) != want:
        raise CheckpointError(f"the graph output is {tuple(got)} at a {PROBE}x{PROBE} input; io "
                              f"(scale {io.scale}, color {io.color!r}) expects {want}")


def load(path: str | os.PathLike, isa: str | None = None, max_memory: int | None = None, *,
         allow_nonfinite: bool = False, tile: int | None = None,
         precision: str = "auto") -> Model:
    """Loads a sparsr checkpoint. isa forces a kernel level ("scalar", "avx2",
    "avx512") for this model; by default the best this CPU supports (lowered by
    the SPARSR_ISA environment variable). allow_nonfinite accepts NaN and
    infinite weights (refused by default: they are almost always a corrupted
    or badly exported file, and make every output pixel they reach NaN).
    max_memory (bytes) bounds the feature memory of one run: a larger image
    runs in bands of rows that fit it (default budget: executor.DEFAULT_BUDGET,
    at most the memory available), and an image that does not fit even so is
    refused before anything is allocated. tile forces bands of that many input
    rows on every image.
    precision: "f32" everywhere; "bf16" everywhere (bfloat16 weights and
    activations, f32 sums) where the kernels have it, on CPUs with
    AVX512_BF16, f32 elsewhere (info() says so); "int8" (s8 weights, u8
    activations, int32 sums; on CPUs with AVX512_VNNI) on every layer with
    int8 calibration in the checkpoint (tools/quantize.py), each layer's own
    choice elsewhere (info()["precision_note"] lists them); "auto" (default)
    each layer's choice in the checkpoint (tools/precision.py,
    tools/quantize.py), f32 where none."""
    env.check()
    path = os.fspath(path)
    description, tensors, metadata = checkpoint.load(path)
    try:
        tensors = checkpoint.decode_sparse(tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if description.get("format") != "graph" or "graph" not in description:
        arch = description.get("architecture")
        raise CheckpointError(f"{path}: not a graph checkpoint (architecture {arch!r} in an "
                              "older layout); convert the PyTorch weights again with "
                              "tools/convert.py")
    if precision not in LOAD_PRECISIONS:
        raise ValueError(f"precision must be one of {LOAD_PRECISIONS}, got {precision!r}")
    if isa is not None and not _core.isa_supported(isa):
        raise ValueError(f"this CPU does not support {isa!r} (best: {_core.detected_isa()})")
    try:
        return Model(description, tensors, metadata, path, isa, max_memory,
                     allow_nonfinite=allow_nonfinite, tile=tile, precision=precision)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
