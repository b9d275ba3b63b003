"""The sparsr command line.

    sparsr upscale IN -o OUT -m MODEL [--mode mask|dense]
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


def _upscale(args) -> int:
    same = os.path.abspath(args.input) == os.path.abspath(args.output) or (
        os.path.exists(args.output) and os.path.exists(args.input)
        and os.path.samefile(args.input, args.output))
    if same:
        raise SparsrError(f"refusing to overwrite the input {args.input} with its upscaled copy")
    if os.path.exists(args.output) and not args.force:
        raise SparsrError(f"{args.output} exists (pass --force to overwrite)")
    model = load(args.model)
    img = read(args.input)
    start = time.perf_counter()
    out = model.upscale(img, mode=args.mode)
    elapsed = time.perf_counter() - start
    try:
        _save_atomic(out, args.output)
    except (ValueError, KeyError) as e:
        raise SparsrError(f"cannot write {args.output}: {e}") from None
    print(f"{args.input} {img.width}x{img.height} -> {args.output} {out.width}x{out.height} "
          f"({args.mode} mode, {elapsed:.2f} s)")
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
    up = sub.add_parser("upscale", help="upscale an image")
    up.add_argument("input")
    up.add_argument("-o", "--output", required=True)
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
