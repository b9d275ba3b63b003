"""python -m tests.fuzz: fuzz for a time budget (or a number of inputs) and
exit 1 on any finding; --replay runs saved inputs instead."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from . import engine, targets

CORPUS = Path(__file__).resolve().parent / "corpus"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--seconds", type=float, default=120.0, help="time budget (default 120)")
    p.add_argument("--inputs", type=int, default=None, help="stop after this many inputs")
    p.add_argument("--seed", type=int, default=0, help="random seed of the mutations")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--targets", default=",".join(targets.TARGETS),
                   help="comma-separated: checkpoint, onnx, pth (default all)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds after which an input is a finding and its worker killed")
    p.add_argument("--findings", type=Path, default=Path("artifacts/fuzz-findings"),
                   help="where inputs that misbehave are saved")
    p.add_argument("--add-to-corpus", action="store_true",
                   help="copy this run's findings (up to 128 kB each) into tests/fuzz/corpus")
    p.add_argument("--collect", nargs="+", type=Path, metavar="FILE",
                   help="add these saved findings to tests/fuzz/corpus and exit")
    p.add_argument("--replay", nargs="+", type=Path, metavar="FILE",
                   help="run these saved inputs in this process and report")
    args = p.parse_args(argv)
    if args.collect:
        print(f"{add_to_corpus(args.collect)} inputs added to {CORPUS}")
        return 0
    if args.replay:
        return 1 if engine.replay(args.replay) else 0
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(wanted) - set(targets.TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; choose from {targets.TARGETS}")
    print(f"fuzzing {', '.join(wanted)} for {args.seconds:.0f} s"
          + (f" or {args.inputs} inputs" if args.inputs else "")
          + f", seed {args.seed}, {args.workers} workers; findings in {args.findings}",
          flush=True)
    stats = engine.fuzz(args.seconds, args.seed, max_inputs=args.inputs, workers=args.workers,
                        wanted=wanted, findings=args.findings, timeout=args.timeout,
                        progress=lambda s: print(s, flush=True))
    report(stats, args.timeout)
    if args.add_to_corpus:
        added = add_to_corpus(Path(f["path"]) for f in stats.findings if "path" in f)
        print(f"{added} inputs added to {CORPUS}")
    return 1 if stats.findings else 0


def add_to_corpus(paths) -> int:
    """Copies saved findings (up to 128 kB each) into the corpus under their
    digest, with a line in corpus/index.txt: file, strategy, what went wrong."""
    added = 0
    index = CORPUS / "index.txt"
    known = index.read_text().splitlines() if index.exists() else []
    for src in paths:
        src = Path(src)
        if src.stat().st_size > 128 << 10:
            continue
        target = engine.target_of(src)
        dst = CORPUS / target / src.name.split("-", 1)[-1]
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        note = Path(str(src) + ".txt")
        lines = note.read_text().splitlines() if note.exists() else ["?", "?"]
        why = lines[1] if len(lines) > 1 else "?"
        known.append(f"{target}/{dst.name}  {src.name.split('-', 1)[0]}  {lines[0]}  "
                     f"{why[:160]}")
        added += 1
    index.write_text("\n".join(sorted(set(known))) + "\n")
    return added


def report(stats: engine.Stats, timeout: float) -> None:
    kinds = stats.kinds()
    print(f"{stats.inputs} inputs in {stats.elapsed:.0f} s "
          f"({stats.inputs / max(stats.elapsed, 1e-9):.0f}/s)")
    for t, counts in sorted(stats.by_target.items()):
        print(f"  {t}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"  exceptions other than sparsr's own errors: {kinds['exception']}")
    print(f"  runs over {timeout:g} s (CPU time): {kinds['slow'] + kinds['timeout']} "
          f"(killed by the watchdog: {kinds['timeout']})")
    print(f"  crashes: {kinds['crash']}")
    print(f"  peak RSS over 4x the file size + 200 MB: {kinds['memory']} "
          f"(largest growth {stats.max_rss_growth / engine.MB:.1f} MB, "
          f"{100 * stats.max_rss_ratio:.0f} % of its limit)")
    if stats.mutator_timeouts:
        print(f"  workers replaced while making an input (the fuzzer's own time): "
              f"{stats.mutator_timeouts}")
    print(f"  slowest input {stats.max_seconds:.3f} s of CPU time (longest wall time "
          f"{stats.max_wall:.3f} s), mean {1000 * stats.total_seconds / max(stats.inputs, 1):.1f} ms")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
