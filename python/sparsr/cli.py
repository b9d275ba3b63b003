"""The sparsr command line.

    sparsr upscale IN [IN ...] -o OUT -m MODEL [--mode mask|dense] [--force]
    sparsr info MODEL [--size H W] [--image IN]
    sparsr cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from PIL import Image

from . import cpu_info, load
from .checkpoint import write_atomically
from .errors import SparsrError
from .image import read


def _save_atomic(img, path: str) -> None:
    """Writes next to the target, then renames: a failure never leaves half a file."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image file extension {Path(path).suffix!r}")
    write_atomically(path, lambda f: img.save(f, format=fmt))


def _output_paths(inputs: list[str], output: str) -> list[str]:
    """Where each input goes: OUT itself for one input, or OUT/<input's name>
    when OUT is a directory (several inputs, an existing directory, or a path
    ending in a separator)."""
    as_dir = len(inputs) > 1 or os.path.isdir(output) or output.endswith(("/", os.sep))
    if not as_dir:
        return [output]
    if os.path.exists(output) and not os.path.isdir(output):
        raise SparsrError(f"{output} is a file; several inputs need an output directory")
    outs, seen = [], {}
    for path in inputs:
        name = os.path.basename(path)
        if name in seen:
            raise SparsrError(f"{seen[name]} and {path} would both be written to "
                              f"{os.path.join(output, name)}")
        seen[name] = path
        outs.append(os.path.join(output, name))
    return outs


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


def _upscale(args) -> int:
    outputs = _output_paths(args.input, args.output)
    # Every refusal comes before any work: a batch never stops half-way on
    # a name it could have checked first.
    # One set of the inputs, not a comparison of every pair: a batch may hold
    # thousands of frames.
    inputs = _file_ids(args.input)
    for out in outputs:
        if _file_ids([out]) & inputs:
            raise SparsrError(f"refusing to overwrite the input {out} with its upscaled copy")
        if os.path.exists(out) and not args.force:
            raise SparsrError(f"{out} exists (pass --force to overwrite)")
        if Image.registered_extensions().get(Path(out).suffix.lower()) is None:
            raise SparsrError(f"cannot write {out}: unknown image file extension "
                              f"{Path(out).suffix!r}")
    model = load(args.model)
    if os.path.dirname(outputs[0]):
        os.makedirs(os.path.dirname(outputs[0]), exist_ok=True)
    failed = []
    for src, out in zip(args.input, outputs):
        try:
            img = read(src)
            start = time.perf_counter()
            big = model.upscale(img, mode=args.mode)
            elapsed = time.perf_counter() - start
            try:
                _save_atomic(big, out)
            except (ValueError, KeyError, OSError) as e:
                raise SparsrError(f"cannot write {out}: {e}") from None
        except SparsrError as e:
            if len(outputs) == 1:
                raise
            # One bad frame of a batch: say which, go on with the others.
            print(f"sparsr: error: {e}", file=sys.stderr)
            failed.append(src)
            continue
        print(f"{src} {img.width}x{img.height} -> {out} {big.width}x{big.height} "
              f"({args.mode} mode, {elapsed:.2f} s)")
    if failed:
        raise SparsrError(f"{len(failed)} of {len(outputs)} images failed: {', '.join(failed)}")
    return 0


def _info(args) -> int:
    model = load(args.model)
    image = read(args.image) if args.image else None
    info = model.info(input_size=tuple(args.size) if args.size else None, image=image)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}: {info['architecture']} x{info['scale']}, kernels {info['isa']}, "
          f"{info['threads']} threads")
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


def _cpu(args) -> int:
    info = cpu_info()
    print(f"active ISA: {info['active_isa']} (detected: {info['detected_isa']}), "
          f"threads: {info['threads']}")
    for op, name in info["kernels"].items():
        print(f"  {op:<16} {name}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sparsr", description="Fast sparse super-resolution on CPUs.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upscale", help="upscale images",
                        description="Upscale one image to OUT, or several (video frames, a "
                                    "folder) into the directory OUT, loading the model once.")
    up.add_argument("input", nargs="+")
    up.add_argument("-o", "--output", required=True,
                    help="output file, or a directory (several inputs, or a path ending in /)")
    up.add_argument("-m", "--model", required=True, help="sparsr checkpoint (.pt)")
    up.add_argument("--mode", choices=["mask", "dense"], default="mask",
                    help="mask: skip what the sparse masks mark (default); dense: compute all")
    up.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
    up.set_defaults(run=_upscale)
    info = sub.add_parser("info", help="describe a model: layers, sparsity, MACs")
    info.add_argument("model")
    info.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    info.add_argument("--image", help="count the MACs executed on this image")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=_info)
    cpu = sub.add_parser("cpu", help="show the instruction set and kernels in use")
    cpu.set_defaults(run=_cpu)
    args = p.parse_args(argv)
    try:
        return args.run(args)
    except SparsrError as e:
        print(f"sparsr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
