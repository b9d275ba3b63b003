"""PSNR / SSIM (Y channel, SR convention) of a model on standard SR test sets.

    python tools/evaluate.py --model smsr_x2.pt --data Set5 --data Set14 [--mode mask|dense] [--json out.json]
    python tools/evaluate.py --torch rfdn_x4.pt --data Set5      # the same graph in PyTorch
    python tools/evaluate.py --model smsr_x2.pt --data Set5 --precision bf16

Datasets use the EDSR layout: ``<dir>/HR/<name>.png`` and
``<dir>/LR_bicubic/X<s>/<name>x<s>.png``. A ``--data`` value that is not an
existing directory is looked up under ``<shared>/data`` (``SPARSR_SHARED`` or
``../shared`` next to the repository). ``--torch`` runs the checkpoint's graph
in PyTorch (``tools/torch_graph.py``, any architecture) instead of the engine.

The functions here (``evaluate_dataset``, ``evaluate_datasets``,
``sparsr_upscaler``, ``torch_upscaler``) are reused by the other tools.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from sparsr.metrics import psnr_y, quantize, ssim_y

REPO_ROOT = Path(__file__).resolve().parent.parent
# An upscaler maps a uint8 (H, W, 3) image to an (sH, sW, 3) image: uint8, or
# float on 0..255 (then clamped and rounded like the authors' evaluation).
Upscaler = Callable[[np.ndarray], np.ndarray]


def shared_root() -> Path:
    """The shared data directory: ``$SPARSR_SHARED`` or ``../shared`` next to the repository."""
    return Path(os.environ.get("SPARSR_SHARED", REPO_ROOT.parent / "shared"))


def resolve_dataset(name_or_path: str | os.PathLike) -> Path:
    """An existing directory as given, else ``<shared>/data/<name>``."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    candidate = shared_root() / "data" / path
    if candidate.is_dir():
        return candidate
    raise FileNotFoundError(f"dataset {str(name_or_path)!r}: neither {path} nor {candidate} is a directory")


def dataset_pairs(data_dir: str | os.PathLike, scale: int) -> list[tuple[str, Path, Path]]:
    """``(name, hr_path, lr_path)`` for every HR image of an EDSR-layout dataset, sorted by name."""
    data_dir = Path(data_dir)
    hr_dir = data_dir / "HR"
    lr_dir = data_dir / "LR_bicubic" / f"X{scale}"
    if not hr_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no HR/ directory (expected the EDSR layout)")
    if not lr_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no LR_bicubic/X{scale}/ directory for scale {scale}")
    pairs = []
    for hr_path in sorted(hr_dir.glob("*.png")):
        lr_path = lr_dir / f"{hr_path.stem}x{scale}.png"
        if not lr_path.is_file():
            raise FileNotFoundError(f"{hr_path}: its LR image {lr_path} is missing")
        pairs.append((hr_path.stem, hr_path, lr_path))
    if not pairs:
        raise FileNotFoundError(f"{hr_dir}: no .png images")
    return pairs


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """A uint8 (H, W, 3) image; greyscale is replicated to three channels (as EDSR does)."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


@dataclass
class ImageResult:
    name: str
    psnr: float
    ssim: float
    seconds: float


@dataclass
class DatasetResult:
    dataset: str
    scale: int
    images: list[ImageResult] = field(default_factory=list)

    @property
    def psnr(self) -> float:
        return float(np.mean([r.psnr for r in self.images]))

    @property
    def ssim(self) -> float:
        return float(np.mean([r.ssim for r in self.images]))

    @property
    def seconds(self) -> float:
        return float(sum(r.seconds for r in self.images))

    def to_dict(self) -> dict:
        """Plain JSON values: a skipped SSIM (NaN) becomes null."""
        def clean(value):
            return None if isinstance(value, float) and math.isnan(value) else value
        return {"dataset": self.dataset, "scale": self.scale, "psnr": self.psnr, "ssim": clean(self.ssim),
                "seconds": self.seconds,
                "images": [{k: clean(v) for k, v in asdict(r).items()} for r in self.images]}


def evaluate_dataset(upscale_fn: Upscaler, data_dir: str | os.PathLike, scale: int, *,
                     compute_ssim: bool = True,
                     on_image: Callable[[ImageResult], None] | None = None) -> DatasetResult:
    """Runs ``upscale_fn`` on every LR image of a dataset and scores it against its HR image.

    ``seconds`` is the time spent in ``upscale_fn`` only. ``compute_ssim=False``
    leaves SSIM as NaN (the sensitivity tools only need PSNR).
    """
    data_dir = Path(data_dir)
    result = DatasetResult(dataset=data_dir.name, scale=scale)
    for name, hr_path, lr_path in dataset_pairs(data_dir, scale):
        lr = load_rgb(lr_path)
        hr = load_rgb(hr_path)
        start = time.perf_counter()
        sr = np.asarray(upscale_fn(lr))
        seconds = time.perf_counter() - start
        if sr.dtype != np.uint8:
            sr = quantize(sr)
        expected = (lr.shape[0] * scale, lr.shape[1] * scale, 3)
        if sr.shape != expected:
            raise ValueError(f"{lr_path}: the model returned shape {sr.shape}, expected {expected}")
        image_result = ImageResult(name=name, psnr=psnr_y(sr, hr, scale),
                                   ssim=ssim_y(sr, hr, scale) if compute_ssim else math.nan,
                                   seconds=seconds)
        result.images.append(image_result)
        if on_image is not None:
            on_image(image_result)
    return result


def evaluate_datasets(upscale_fn: Upscaler, data_dirs: Iterable[str | os.PathLike], scale: int,
                      **kwargs) -> list[DatasetResult]:
    return [evaluate_dataset(upscale_fn, resolve_dataset(d), scale, **kwargs) for d in data_dirs]


def sparsr_upscaler(model_path: str | os.PathLike, mode: str | None = None,
                    precision: str | None = None) -> tuple[Upscaler, int | None]:
    """``(upscale_fn, scale or None)`` for a sparsr checkpoint.

    ``mode=None`` uses ``model.upscale``; "mask"/"dense" use ``model.forward(img, mode=...)``.
    ``precision``: as ``sparsr.load`` (None: its default).
    """
    import sparsr

    model = sparsr.load(model_path) if precision is None else sparsr.load(model_path,
                                                                           precision=precision)
    scale = getattr(model, "scale", None)
    if mode is None:
        return model.upscale, scale
    return (lambda img: model.forward(img, mode=mode).output), scale


def torch_upscaler(model_path: str | os.PathLike, mode: str = "mask") -> tuple[Upscaler, int]:
    """``(upscale_fn, scale)`` running a sparsr checkpoint's graph in PyTorch
    (tools/torch_graph.py; "mask": SMSR masks on, "dense": off)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_graph import GraphModule
    net = GraphModule.from_checkpoint(model_path).eval()
    return net.upscaler(masks=mode == "mask"), net.scale


def _row(name: str, psnr: float, ssim: float, seconds: float) -> str:
    ssim_text = "-" if math.isnan(ssim) else f"{ssim:.4f}"
    return f"  {name:<16} {psnr:8.3f} {ssim_text:>7} {seconds:7.2f}"


def _format_table(result: DatasetResult) -> str:
    lines = [f"{result.dataset} x{result.scale}",
             f"  {'image':<16} {'PSNR':>8} {'SSIM':>7} {'sec':>7}"]
    lines += [_row(r.name, r.psnr, r.ssim, r.seconds) for r in result.images]
    lines.append(_row("mean", result.psnr, result.ssim, result.seconds))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a sparsr checkpoint")
    source.add_argument("--torch", metavar="CHECKPOINT",
                        help="a sparsr checkpoint, its graph run in PyTorch (tools/torch_graph.py)")
    parser.add_argument("--data", action="append",
                        help="dataset directory or name under <shared>/data (repeatable; default Set5)")
    parser.add_argument("--mode", choices=["mask", "dense"],
                        help="spatial masks on (mask) or off (dense); default: the model's own upscale "
                             "(mask for --torch)")
    parser.add_argument("--precision", choices=["f32", "bf16", "int8", "auto"],
                        help="what a sparsr model's convolutions compute in (sparsr.load; "
                             "default auto)")
    parser.add_argument("--scale", type=int, help="default: the model's scale")
    parser.add_argument("--no-ssim", action="store_true", help="PSNR only (faster)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.torch:
        mode = args.mode or "mask"
        upscale_fn, model_scale = torch_upscaler(args.torch, mode)
        source_name = args.torch
    else:
        mode = args.mode
        upscale_fn, model_scale = sparsr_upscaler(args.model, mode, args.precision)
        source_name = args.model
    scale = args.scale or model_scale
    if scale is None:
        parser.error("the model does not state its scale: pass --scale")
    if model_scale is not None and args.scale is not None and args.scale != model_scale:
        parser.error(f"--scale {args.scale} but the model upscales x{model_scale}")

    results = []
    try:
        data_dirs = [resolve_dataset(data) for data in args.data or ["Set5"]]
        for data_dir in data_dirs:
            result = evaluate_dataset(upscale_fn, data_dir, scale, compute_ssim=not args.no_ssim)
            print(_format_table(result), flush=True)
            results.append(result)
    except (FileNotFoundError, ValueError) as error:
        print(f"evaluate.py: error: {error}", file=sys.stderr)
        return 2
    if len(results) > 1:
        print("summary")
        for r in results:
            print(_row(r.dataset, r.psnr, r.ssim, r.seconds))
    if args.json:
        report = {"model": str(source_name), "torch": bool(args.torch), "mode": mode,
                  "precision": args.precision,
                  "scale": scale, "datasets": [r.to_dict() for r in results]}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
