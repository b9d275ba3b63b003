"""One-shot magnitude N:M pruning of any sparsr checkpoint, optionally fine-tuned with the masks fixed.

    python tools/nm_prune.py artifacts/smsr_x2.pt -o artifacts/nm/oneshot_2of4.pt --n 2 --m 4
    python tools/nm_prune.py artifacts/rfdn_x4.pt -o artifacts/nm/rfdn_2of4.pt --n 2 --m 4 \
        --all-eligible --finetune-steps 120 --finetune-minutes 12

Layers: by default the graph's core layers (tools/sparsity_common.py core_layers: SMSR's
20 sparse mask convs, or every body 3x3 conv of another network); --all-eligible takes
every convolution that can be N:M (a 1x1 or 3x3 stride-1 conv with at least M input
channels per group; the others stay dense and are reported); --layers REGEX names the
layers explicitly, and then a matching layer that cannot be N:M is an error. Every group
of M consecutive input channels at one (cout, ky, kx) keeps its N largest |w| (ties:
lower channel); when M does not divide the input channels the last group is short and
keeps min(N, its width). The layers are written as format "nm" with options {"n", "m"}.
--block B shares the pattern among blocks of B output channels (consecutive in the order
the engine packs them; sparsity_common.prune_blocks_nm: a group keeps the N input channels
of largest block L2 norm), the unit the block-sparse kernels skip; such layers are written
as format "bcsr" (each output channel is still N:M).

Fine-tuning (--finetune-steps / --finetune-minutes): L1, Adam, cosine learning rate, random
B100 HR patches with LR made by PIL bicubic downscaling (tools/nm_common.py), on the graph
in PyTorch (tools/torch_graph.py); the N:M masks are fixed and re-applied after every step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nm_common import (GraphModule, NMError, PatchSampler, check_nm, finetune,  # noqa: E402
                       finetune_args, finetune_plan, load_checkpoint, nm_eligible, nm_mask,
                       nm_prune, regex_layers, write_nm_checkpoint)
from sparsity_common import (conv_output_order, conv_table, core_layers,  # noqa: E402
                             prune_blocks_nm)


def select_layers(shapes: dict[str, tuple], m: int, pattern: str | None, all_eligible: bool,
                  core: list[str] | None = None,
                  packed: set[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(layers to prune, {layer left dense: why}). shapes: every conv's weight shape
    (cout, cin / groups, kh, kw); core: the default targets (None: every conv); packed:
    the convs the packed kernels run (None: all), the only ones with an N:M kernel. An
    explicitly requested layer (pattern) that cannot be N:M is refused."""
    names = list(shapes)
    packed = set(names) if packed is None else set(packed)

    def why(n: str) -> str | None:
        if n not in packed:
            return "not a 1x1 or 3x3 stride-1 convolution: no N:M kernel"
        if not nm_eligible(shapes[n], m):
            return f"{shapes[n][1]} input channels, fewer than M={m}"
        return None

    if pattern is not None:
        chosen = regex_layers(names, pattern)
        if not chosen:
            raise NMError(f"--layers {pattern!r} matches no convolution")
        bad = [n for n in chosen if why(n)]
        if bad:
            n = bad[0]
            reason = why(n)
            reason = f"has {reason}" if reason[0].isdigit() else f"is {reason}"
            raise NMError(f"layer {n} {reason}"
                          + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        return chosen, {}
    candidates = names if all_eligible or core is None else [n for n in names if n in set(core)]
    chosen = [n for n in candidates if not why(n)]
    dense = {n: why(n) for n in candidates if n not in chosen}
    return chosen, dense


def prune_tensors(tensors: dict, layers: list[str], n: int, m: int, block: int = 0,
                  orders: dict | None = None) -> dict:
    out = dict(tensors)
    for name in layers:
        w = tensors[name + ".weight"]
        out[name + ".weight"] = (prune_blocks_nm(w, n, m, block, (orders or {}).get(name))
                                 if block else nm_prune(w, n, m))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="any sparsr checkpoint (e.g. artifacts/smsr_x2.pt)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--m", type=int, required=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--layers", help="regex over conv names: exactly these layers")
    which.add_argument("--all-eligible", action="store_true",
                       help="every conv that can be N:M, not only the core layers")
    p.add_argument("--block", type=int, default=0,
                   help="share the pattern among blocks of this many output channels "
                        "(format bcsr); default 0: per output channel (format nm)")
    p.add_argument("--json", help="write a report (layers, fine-tuning) here")
    finetune_args(p)
    args = p.parse_args(argv)
    prog = Path(sys.argv[0]).name if argv is None else "nm_prune.py"
    try:
        check_nm(args.n, args.m)
        if Path(args.output).resolve() == Path(args.model).resolve():
            raise NMError("refusing to overwrite the input checkpoint")
        import sparsr
        model_desc, tensors, metadata = load_checkpoint(args.model)
        import torch
        torch.set_num_threads(args.threads)
        engine = sparsr.load(args.model)
        table = conv_table(engine)
        shapes = {name: c.shape for name, c in table.items()}
        layers, left_dense = select_layers(shapes, args.m, args.layers, args.all_eligible,
                                           core_layers(engine),
                                           {n for n, c in table.items() if c.packed})
    except (NMError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # CheckpointError and friends: one line, non-zero
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    if args.block < 0:
        print(f"{prog}: error: --block must be >= 0", file=sys.stderr)
        return 2
    orders = {n: conv_output_order(engine, n) for n in layers} if args.block else None
    tensors = prune_tensors(tensors, layers, args.n, args.m, args.block, orders)
    report = {"tool": "tools/nm_prune.py", "base": Path(args.model).name, "n": args.n, "m": args.m,
              "block": args.block, "layers": {n: args.n for n in layers},
              "left_dense": left_dense}
    steps, minutes = finetune_plan(args)
    if steps:
        net = GraphModule(model_desc, tensors)
        masks = {name: (torch.as_tensor(tensors[name + ".weight"] != 0) if args.block
                        else nm_mask(tensors[name + ".weight"], args.n, args.m))
                 for name in layers}
        sampler = PatchSampler(args.train_data, scale=net.scale, patch=args.patch,
                               seed=args.seed)
        report["finetune"] = finetune(net, masks, sampler, steps=steps, minutes=minutes,
                                      lr=args.lr, batch=args.batch)
        report["finetune"]["train_data"] = (f"{args.train_data} HR, LR by PIL bicubic "
                                            f"x{net.scale}")
        tensors = net.export_tensors(tensors)
    report["seconds"] = time.perf_counter() - start
    metadata = dict(metadata, tool="tools/nm_prune.py", nm=report)
    write_nm_checkpoint(args.output, model_desc, tensors, report["layers"], args.m, metadata,
                        format="bcsr" if args.block else "nm")
    for name, why in left_dense.items():
        print(f"left dense: {name} ({why})")
    print(f"wrote {args.output}: {len(layers)} layers {args.n}:{args.m}"
          + (f", fine-tuned {report['finetune']['steps']} steps in "
             f"{report['finetune']['seconds']:.0f} s" if steps else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
