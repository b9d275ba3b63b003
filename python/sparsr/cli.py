"""The sparsr command line.

    sparsr upscale IN [IN ...] -o OUT -m MODEL [-s OUTSCALE] [--format F] [--force] ...
    sparsr info MODEL [--size H W] [--image IN] [--json]
    sparsr models
    sparsr cpu

IN is a file, a directory (--recursive for its subdirectories) or a glob;
MODEL is a checkpoint file or the name of one in SPARSR_MODELS
(~/.cache/sparsr by default). Exit codes: 0 done, 2 an error (named on
stderr), 130 interrupted (Ctrl-C), 143 terminated.
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import env, image
from .checkpoint import write_atomically
from .errors import ImageError, SparsrError
from .upscale import upscale_image

# errno values after which no other output of a batch can be written either.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


class _Terminated(BaseException):
    """Raised by the SIGTERM handler, so that cleanups run as on Ctrl-C."""


class _BatchStops(SparsrError):
    """An error that stops a whole batch (a full disk), not just one image."""


@dataclass
class Job:
    source: str
    output: str
    format: str
    size: tuple[int, int] | None = None     # (width, height) from the header, if readable
    alpha: bool = False


# ---------------------------------------------------------------------------
# Inputs and outputs

def _readable_extensions() -> set[str]:
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _images_in(directory: str, recursive: bool) -> list[str]:
    """Image files in a directory (by extension; hidden files skipped), sorted."""
    exts = _readable_extensions()
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [os.path.join(root, name) for name in files
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts]
    return sorted(found)


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or (os.sep if pattern.startswith(os.sep) else ".")


def _expand(inputs: list[str], recursive: bool) -> list[tuple[str, str | None]]:
    """(file, the directory its output path is relative to, or None: its name)."""
    found = []
    for arg in inputs:
        if os.path.isdir(arg):
            files = _images_in(arg, recursive)
            if not files:
                hint = "" if recursive else " (--recursive looks in its subdirectories)"
                raise SparsrError(f"{arg}: no image files in this directory{hint}")
            found += [(path, arg) for path in files]
        elif os.path.exists(arg):
            found.append((arg, None))
        elif glob.has_magic(arg):
            matches = sorted(p for p in glob.glob(arg, recursive=recursive) if os.path.isfile(p))
            if not matches:
                raise SparsrError(f"no files match {arg!r}")
            found += [(path, _glob_base(arg)) for path in matches]
        else:
            raise SparsrError(f"{arg}: no such file or directory")
    return found


def _output_format(args, out: str) -> str:
    """The format an explicit output file is written in."""
    by_name = image.format_of(out)
    if args.format:
        wanted = image.FORMATS[args.format]
        if by_name is not None and by_name != wanted:
            raise SparsrError(f"{out}: the extension says {by_name}, --format says {wanted}")
        return wanted
    if by_name is None:
        raise SparsrError(f"cannot write {out}: unknown image file extension "
                          f"{os.path.splitext(out)[1]!r} (for a directory, end it with "
                          f"{os.sep})")
    return by_name


def _plan(args) -> list[Job]:
    """Every input and where it goes; raises before any work on any refusal."""
    sources = _expand(args.input, args.recursive)
    output = args.output
    as_dir = (len(sources) > 1 or any(base is not None for _, base in sources)
              or os.path.isdir(output) or output.endswith(("/", os.sep)))
    jobs = []
    if not as_dir:
        jobs.append(Job(sources[0][0], output, _output_format(args, output)))
    else:
        if os.path.exists(output) and not os.path.isdir(output):
            raise SparsrError(f"{output} is a file; several inputs need an output directory")
        seen: dict[str, str] = {}
        for src, base in sources:
            rel = os.path.relpath(src, base) if base is not None else os.path.basename(src)
            stem, ext = os.path.splitext(rel)
            own = image.format_of(src)
            fmt = image.FORMATS[args.format] if args.format else (own or "PNG")
            if fmt != own:
                ext = image.EXTENSIONS.get(fmt, "." + fmt.lower())
            out = os.path.join(output, stem + (f"_{args.suffix}" if args.suffix else "") + ext)
            key = os.path.normcase(os.path.normpath(out))
            if key in seen:
                raise SparsrError(f"{seen[key]} and {src} would both be written to {out}")
            seen[key] = src
            jobs.append(Job(src, out, fmt))
    _refuse(args, jobs)
    return jobs


def _file_ids(paths: list[str]) -> set:
    """Absolute paths, and (device, inode) of those that exist: a link to a
    file is the file."""
    ids = set()
    for path in paths:
        ids.add(os.path.abspath(path))
        if os.path.exists(path):
            st = os.stat(path)
            ids.add((st.st_dev, st.st_ino))
    return ids


def _refuse(args, jobs: list[Job]) -> None:
    # Every refusal comes before any work: a batch never stops half-way on
    # a name it could have checked first. One set of the inputs, not a
    # comparison of every pair: a batch may hold thousands of frames.
    inputs = _file_ids([job.source for job in jobs])
    for job in jobs:
        out = job.output
        if _file_ids([out]) & inputs:
            raise SparsrError(f"refusing to overwrite the input {out} with its upscaled copy")
        if os.path.isdir(out):
            raise SparsrError(f"{out} is a directory")
        if os.path.exists(out) and not args.force:
            raise SparsrError(f"{out} exists (pass --force to overwrite)")
        header = image.probe(job.source)
        if header is not None:
            job.size, job.alpha = header
        if job.alpha and args.alpha != "drop" and job.format not in image.ALPHA_FORMATS:
            raise SparsrError(f"{job.source} has an alpha channel, which {job.format} cannot "
                              f"hold ({out}): pass --format png (or webp, tiff) to keep it, or "
                              "--alpha drop to discard it")


# ---------------------------------------------------------------------------
# Models

def _resolve_model(spec: str) -> str:
    """A checkpoint path, or the name of a file in the models directory."""
    if os.path.exists(spec) or os.sep in spec or (os.altsep and os.altsep in spec):
        return spec
    directory = env.models_dir()
    matches = []
    if directory.is_dir():
        exact = directory / spec
        if exact.is_file():
            return str(exact)
        matches = sorted(p for p in directory.glob(glob.escape(spec) + ".*") if p.is_file())
    if len(matches) == 1:
        return str(matches[0])
    if matches:
        raise SparsrError(f"several models named {spec!r} in {directory}: "
                          f"{', '.join(p.name for p in matches)} (pass one file name)")
    known = [name for name, _, _ in _list_models(directory)]
    there = f" (there: {', '.join(known)})" if known else " (it holds no models)"
    raise SparsrError(f"no model {spec!r}: not a file, and not in {directory}"
                      f"{there if directory.is_dir() else ''}; set SPARSR_MODELS to the "
                      "directory of your models, or pass a file path")


def _list_models(directory) -> list[tuple[str, int, str]]:
    """(name, size in bytes, path) of the models in a directory."""
    if not directory.is_dir():
        return []
    return [(p.stem, p.stat().st_size, str(p)) for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(".")]


PRECISION_HELP = ("what the convolutions compute in: f32, bf16 (on CPUs with AVX512_BF16, "
                  "else f32), int8 (layers with calibration, on CPUs with AVX512_VNNI; "
                  "tools/quantize.py), or auto: each layer's choice in the checkpoint (default; "
                  "f32 where none, tools/precision.py and tools/quantize.py write it)")


def _load_model(args) -> Any:
    """The model the upscale command runs (tests replace this function)."""
    from . import load

    return load(_resolve_model(args.model), max_memory=args.max_memory, tile=args.tile,
                precision=args.precision or "auto").with_mode(args.mode or "mask")


def _release_buffers() -> None:
    """Frees the engine's pooled buffers (sized for the last image)."""
    from . import _core

    if hasattr(_core, "release_buffers"):
        _core.release_buffers()


# ---------------------------------------------------------------------------
# Progress

class _ProgressBar:
    """One line on stderr: the batch's share done (in input pixels, so a
    large image counts for more), elapsed time and an estimate of the rest."""

    def __init__(self, jobs: list[Job], enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        known = [w * h for w, h in (j.size for j in jobs if j.size)]
        typical = sum(known) / len(known) if known else 1
        self.weights = [j.size[0] * j.size[1] if j.size else typical for j in jobs]
        self.total = sum(self.weights) or 1
        self.count = len(jobs)
        self.done = 0.0           # weight of the finished images
        self.index = 0
        self.name = ""
        self.fraction = 0.0       # of the current image
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.lock = threading.Lock()
        self.shown = False

    def begin(self, index: int, name: str) -> None:
        self.index, self.name, self.fraction = index, name, 0.0
        self._draw(force=True)

    def image_progress(self, done: int, total: int) -> None:
        """The callback upscale_image calls (from the worker thread)."""
        self.fraction = done / total if total else 1.0
        self._draw(force=done == total)

    def end(self) -> None:
        self.done += self.weights[self.index]
        self.fraction = 0.0

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        with self.lock:
            if not force and now - self.last_draw < 0.2:
                return
            self.last_draw = now
            share = min(1.0, (self.done + self.fraction * self.weights[self.index]) / self.total)
            elapsed = now - self.start
            eta = f"ETA {_duration(elapsed / share * (1 - share))}" if share > 0.001 else "ETA ?"
            width = shutil.get_terminal_size((80, 20)).columns
            bar = "#" * int(share * 20)
            line = (f"{share:4.0%} [{bar:<20}] {self.index + 1}/{self.count} "
                    f"{_duration(elapsed)} {eta}  {self.name}")
            self.stream.write("\r" + line[:width - 1].ljust(width - 1))
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.enabled and self.shown:
            with self.lock:
                width = shutil.get_terminal_size((80, 20)).columns
                self.stream.write("\r" + " " * (width - 1) + "\r")
                self.stream.flush()
                self.shown = False


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


# ---------------------------------------------------------------------------
# Upscale

def _interruptible(fn: Callable[[], Any]) -> Any:
    """Runs fn in a worker thread while the main thread waits in short steps:
    a native call holds the main thread until it returns, but Ctrl-C must
    stop the program within a second."""
    outcome: dict[str, Any] = {}

    def work():
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e

    worker = threading.Thread(target=work, name="sparsr-upscale", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _drop_alpha(pixels: Any) -> Any:
    if isinstance(pixels, np.ndarray):
        if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
            return np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 2 else
                                        pixels[..., :3])
        return pixels
    if image.has_alpha(pixels):
        grey = pixels.mode in ("LA", "La", "L")
        return pixels.convert("L" if grey else "RGB")
    return pixels


def _size(pixels: Any) -> tuple[int, int]:
    if isinstance(pixels, np.ndarray):
        return pixels.shape[1], pixels.shape[0]
    return pixels.size


def _write(job: Job, big: Any, loaded: image.ImageFile, quality: int | None,
           compression: int | None = None) -> None:
    parent = os.path.dirname(job.output)
    try:
        if parent:
            os.makedirs(parent, exist_ok=True)
        write_atomically(job.output, lambda f: image.write(
            f, big, job.format, icc_profile=loaded.icc_profile, exif=loaded.exif,
            quality=quality, compression=compression))
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno in _DISK_ERRORS:
            raise _BatchStops(f"cannot write {job.output}: {reason}") from None
        raise SparsrError(f"cannot write {job.output}: {reason}") from None
    except (ValueError, KeyError) as e:
        raise SparsrError(f"cannot write {job.output} as {job.format}: {e}") from None


def _upscale(args) -> int:
    jobs = _plan(args)
    if args.threads:
        from . import set_num_threads
        set_num_threads(args.threads)
    model = _load_model(args)
    bar = _ProgressBar(jobs, enabled=sys.stderr.isatty() and not args.quiet)
    report, failed = [], []
    last_size = None
    for index, job in enumerate(jobs):
        bar.begin(index, os.path.basename(job.source))
        try:
            loaded = image.read_file(job.source)
            pixels = loaded.pixels
            if args.alpha == "drop":
                pixels = _drop_alpha(pixels)
            size = _size(pixels)
            if last_size is not None and size != last_size:
                _release_buffers()   # pooled buffers were sized for the last image
            last_size = size
            start = time.perf_counter()
            try:
                big = _interruptible(lambda: upscale_image(
                    model, pixels, alpha="bicubic" if args.alpha == "bicubic" else "model",
                    outscale=args.outscale, progress=bar.image_progress))
            except ImageError as e:
                raise ImageError(f"{job.source}: {e}") from None
            elapsed = time.perf_counter() - start
            _write(job, big, loaded, args.quality, args.compression)
        except SparsrError as e:
            bar.clear()
            if len(jobs) == 1 or isinstance(e, _BatchStops):
                raise
            # One bad frame of a batch: say which, go on with the others.
            print(f"sparsr: error: {e}", file=sys.stderr)
            failed.append({"input": job.source, "error": str(e)})
            bar.end()
            continue
        bar.end()
        out_size = _size(big)
        report.append({"input": job.source, "output": job.output, "size_in": list(size),
                       "size_out": list(out_size), "seconds": round(elapsed, 4)})
        if not args.quiet and not args.json:
            bar.clear()
            print(f"{job.source} {size[0]}x{size[1]} -> {job.output} "
                  f"{out_size[0]}x{out_size[1]} ({elapsed:.2f} s)", flush=True)
    bar.clear()
    if args.json:
        print(json.dumps({"images": report, "failed": failed}, indent=2))
    if failed:
        raise SparsrError(f"{len(failed)} of {len(jobs)} images failed: "
                          f"{', '.join(f['input'] for f in failed)}")
    return 0


# ---------------------------------------------------------------------------
# Other commands

def _info(args) -> int:
    from . import load

    model = load(_resolve_model(args.model), precision=args.precision or "auto")
    img = image.read(args.image) if args.image else None
    info = model.info(input_size=tuple(args.size) if args.size else None, image=img)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['architecture']} x{info['scale']}, kernels {info['isa']}, "
          f"{info['threads']} threads, precision {info['precision']} "
          f"({info['bf16_layers']} layers bf16"
          + (f", {info['int8_layers']} int8)" if info["int8_layers"] else ")"))
    if "precision_note" in info:
        print(info["precision_note"])
    print(f"conv weights: {info['conv_params']:,} parameters, {info['conv_nonzeros']:,} nonzero")
    print(f"{'layer':<28} {'shape':<18} {'format':<7} {'sparsity':>8}  kernel")
    for r in info["layers"]:
        shape = "x".join(str(d) for d in r["shape"])
        print(f"{r['name']:<28} {shape:<18} {r['format']:<7} {r['sparsity']:>8.1%}  {r['kernel']}")
    if "dense_macs" in info:
        h, w = info["input_size"]
        print(f"dense MACs at {w}x{h}: {info['dense_macs'] / 1e9:.2f} G")
    if "executed_macs" in info:
        print(f"executed MACs with masks: {info['executed_macs'] / 1e9:.2f} G "
              f"({info['executed_macs'] / info['dense_macs']:.1%} of dense); important pixels "
              "per module: " + ", ".join(f"{d:.1%}" for d in info["mask_density"]))
    return 0


def _models(args) -> int:
    directory = env.models_dir()
    models = _list_models(directory)
    if args.json:
        print(json.dumps([{"name": n, "bytes": size, "path": p} for n, size, p in models],
                         indent=2))
        return 0
    if not models:
        state = "holds no models" if directory.is_dir() else "does not exist"
        print(f"sparsr: {directory} {state} (set SPARSR_MODELS to the directory of your "
              "models)", file=sys.stderr)
        return 0
    width = max(len(n) for n, _, _ in models)
    for name, size, path in models:
        print(f"{name:<{width}}  {size / 1e6:9.1f} MB  {path}")
    return 0


def _convert(args) -> int:
    from .importers import convert

    if os.path.exists(args.output) and not args.force:
        raise SparsrError(f"{args.output} exists (use --force to replace it)")
    if os.path.abspath(args.output) == os.path.abspath(args.source):
        raise SparsrError("the output would overwrite the source")
    model = convert(args.source, args.output, scale=args.scale, input_range=args.range,
                    color=args.color)
    io = model["io"]
    print(f"wrote {args.output}: {model.get('architecture', 'graph')} x{io['scale']}, "
          f"{io['color']} on 0..{io['range']:g}, {len(model['graph']['nodes'])} nodes")
    return 0


def _cpu(args) -> int:
    from . import cpu_info

    info = cpu_info()
    print(f"active ISA: {info['active_isa']} (detected: {info['detected_isa']}), "
          f"threads: {info['threads']}")
    for op, name in info["kernels"].items():
        print(f"  {op:<16} {name}")
    return 0


def _positive(kind: type, what: str, top: float | None = None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0 or (top is not None and value > top):
            limit = f" and <= {top:g}" if top is not None else ""
            raise argparse.ArgumentTypeError(f"{what} must be a number > 0{limit}, got {text!r}")
        return value
    return parse


def _level(text: str) -> int:
    if text.strip().isdigit() and int(text) <= 9:
        return int(text)
    raise argparse.ArgumentTypeError(f"--compression must be a deflate level 0..9, got {text!r}")


def _bytes(text: str) -> int:
    """A memory size: bytes, or a number with K, M, G or T (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[:len(t) - len(unit)])
    except ValueError:
        value = -1.0
    if not value > 0 or value * units[unit] > 1 << 50:
        raise argparse.ArgumentTypeError(f"--max-memory must be a size such as 2G or 512M, "
                                         f"got {text!r}")
    return int(value * units[unit])


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="sparsr", description="Fast sparse super-resolution on CPUs.")
    p.add_argument("--version", action="version", version=f"sparsr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upscale", help="upscale images",
                        description="Upscale one image to OUT, or several (video frames, a "
                                    "folder, a glob) into the directory OUT, loading the model "
                                    "once. Paths under an input directory are kept under OUT.")
    up.add_argument("input", nargs="+", help="image files, directories or globs")
    up.add_argument("-o", "--output", required=True,
                    help="output file, or a directory (several inputs, a directory or a glob, "
                         "or a path ending in /)")
    up.add_argument("-m", "--model", required=True,
                    help="a sparsr checkpoint, or the name of one in SPARSR_MODELS "
                         "(default ~/.cache/sparsr; see `sparsr models`)")
    up.add_argument("-s", "--outscale", type=_positive(float, "--outscale"),
                    help="final scale when the model has another one (its output is resized "
                         "with Lanczos)")
    up.add_argument("--format", choices=sorted(image.FORMATS),
                    help="output format (default: the input's, or PNG)")
    up.add_argument("--suffix", default="", help="add _SUFFIX to output names in a directory")
    up.add_argument("--quality", type=_positive(int, "--quality", 100),
                    help="JPEG/WebP quality 1..100 (default 95)")
    up.add_argument("--compression", type=_level, metavar="0..9",
                    help=f"PNG/TIFF deflate level (default {image.DEFAULT_COMPRESSION}; 9: "
                         "smallest files, slowest)")
    up.add_argument("--alpha", choices=["model", "bicubic", "drop"], default="model",
                    help="alpha channel: upscaled by the model (default), bicubically, or dropped")
    up.add_argument("-r", "--recursive", action="store_true",
                    help="look in subdirectories of input directories (and ** in globs)")
    up.add_argument("--threads", type=_positive(int, "--threads"),
                    help="threads the kernels use (default: SPARSR_NUM_THREADS or every core)")
    up.add_argument("--mode", choices=["mask", "dense"],
                    help="mask: skip what the sparse masks mark (default); dense: compute all")
    up.add_argument("--tile", type=_positive(int, "--tile"), metavar="ROWS",
                    help="run the network in bands of ROWS input rows (never needed: an image "
                         "whose features exceed the memory budget runs in bands anyway, with "
                         "the same result)")
    up.add_argument("--max-memory", type=_bytes, metavar="SIZE",
                    help="feature memory budget, e.g. 2G or 512M (default 512M plus the "
                         "output, at most what is available): larger images run in bands")
    up.add_argument("--precision", choices=["f32", "bf16", "int8", "auto"],
                    help=PRECISION_HELP)
    up.add_argument("-f", "--force", action="store_true", help="overwrite outputs that exist")
    up.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    up.add_argument("--json", action="store_true",
                    help="print a report: per image input, output, sizes and seconds")
    up.set_defaults(run=_upscale)
    info = sub.add_parser("info", help="describe a model: layers, sparsity, MACs")
    info.add_argument("model")
    info.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    info.add_argument("--image", help="count the MACs executed on this image")
    info.add_argument("--precision", choices=["f32", "bf16", "int8", "auto"], help=PRECISION_HELP)
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info)
    models = sub.add_parser("models", help="list the models in SPARSR_MODELS (~/.cache/sparsr)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=_models)
    conv = sub.add_parser("convert", help="PyTorch weights or ONNX -> a sparsr checkpoint",
                          description="Convert a network: PyTorch weights of a known "
                                      "architecture (recognised from the keys) or an ONNX file. "
                                      'Needs pip install "sparsr[convert]".')
    conv.add_argument("source", help="a .pth/.pt state_dict or an .onnx file")
    conv.add_argument("-o", "--output", required=True, help="the sparsr checkpoint to write")
    conv.add_argument("--scale", type=_positive(int, "--scale", 16),
                      help="the scale to take from a multi-scale model (e.g. CARN-M)")
    conv.add_argument("--range", type=_positive(float, "--range"),
                      help="ONNX: the pixel range the network expects (1 or 255; default 1)")
    conv.add_argument("--color", choices=["rgb", "y", "grey"],
                      help="ONNX: the network's colour (default: from its input channels)")
    conv.add_argument("-f", "--force", action="store_true", help="replace an existing output")
    conv.set_defaults(run=_convert)
    cpu = sub.add_parser("cpu", help="show the instruction set and kernels in use")
    cpu.set_defaults(run=_cpu)
    return p


def _on_sigterm(signum, frame):
    raise _Terminated()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    code = 0
    try:
        env.apply()
        code = args.run(args)
        sys.stdout.flush()   # a closed pipe shows here, inside the handlers below
    except SparsrError as e:
        print(f"sparsr: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("\nsparsr: interrupted", file=sys.stderr)
        code = 130
    except _Terminated:
        print("sparsr: terminated", file=sys.stderr)
        code = 143
    except BrokenPipeError:
        # The reader went away (`| head`): no traceback, and nothing more to print.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 141
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    if code in (130, 143) and any(t.name == "sparsr-upscale" and t.is_alive()
                                  for t in threading.enumerate()):
        # The network is still running natively in its thread; temporary files
        # are already removed, and there is nothing to wait for.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
