"""Quick check of the sparse convolution kernels (CSR, or block-sparse bcsr) against dense.

Times one layer at full-frame size with the dense kernel and with the sparse
kernel at several sparsities, in the same process, and prints
sparse_ms / ((1 - s) * dense_ms): the kernel keeps its promise when this
ratio stays at or below the target (1.3), i.e. it turns a fraction s of zero
weights into nearly that fraction of saved time. CSR weights have unstructured
zeros; bcsr weights zero whole blocks (the kernel's block of output channels at
one input channel and tap), so 1 - s is the kept fraction of both. --peak adds
GFLOP/s (2 x kept MACs / time) against the FMA peak measured in the same run.

    python benchmarks/bench_csr_kernel.py [--threads 2] [--repeats 7] [--isa avx512]
    python benchmarks/bench_csr_kernel.py --format bcsr --peak
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sparsr import _core


def random_sparse_weight(rng: np.random.Generator, cout: int, cin: int, ksize: int,
                         sparsity: float) -> np.ndarray:
    """OIHW float32 weights with exactly round(sparsity * size) zeros at random places."""
    weight = rng.standard_normal((cout, cin, ksize, ksize)).astype(np.float32)
    flat = weight.reshape(-1)
    flat[rng.permutation(flat.size)[: int(round(sparsity * flat.size))]] = 0.0
    return weight


def random_block_sparse_weight(rng: np.random.Generator, cout: int, cin: int, ksize: int,
                               sparsity: float, block: int) -> np.ndarray:
    """OIHW float32 weights with round(sparsity * positions) whole blocks zero: a block
    is `block` consecutive output channels at one (input channel, tap)."""
    blocks = -(-cout // block)
    weight = rng.standard_normal((blocks * block, cin, ksize, ksize)).astype(np.float32)
    positions = blocks * cin * ksize * ksize
    drop = np.zeros(positions, dtype=bool)
    drop[rng.permutation(positions)[: int(round(sparsity * positions))]] = True
    drop = np.repeat(drop.reshape(blocks, cin, ksize, ksize), block, axis=0)
    weight[drop] = 0.0
    return np.ascontiguousarray(weight[:cout])


def bcsr_block() -> int:
    return next(k["block"] for k in _core.kernels() if k["format"] == "bcsr")


def time_layers(layers: dict, cin: int, cout: int, height: int, width: int, repeats: int,
                seed: int = 0, clock=time.perf_counter, input_planes: int | None = None) -> dict:
    """Median milliseconds of each layer over full frames; runs are interleaved so
    that the machine's slow phases hit every layer alike. clock=time.process_time
    measures CPU time of all threads instead, which a busy shared machine
    disturbs much less than wall time (the pool's threads block, never spin).
    input_planes=k reads input channel i from plane i % k: with few planes the
    inputs stay in L1, which separates a kernel's own loads and arithmetic from
    the memory system."""
    rng = np.random.default_rng(seed)
    x = _core.Feature.from_numpy(rng.standard_normal((cin, height, width)).astype(np.float32))
    y = _core.Feature(cout, height, width)
    pixels = _core.PixelSet.full(height, width)
    xv = x.view() if input_planes is None else x.view([i % input_planes for i in range(cin)])
    yv = y.view()
    times = {name: [] for name in layers}
    for layer in layers.values():  # warm-up: page faults, thread start
        layer(xv, yv, pixels)
    for _ in range(repeats):
        for name, layer in layers.items():
            start = clock()
            layer(xv, yv, pixels)
            times[name].append((clock() - start) * 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def csr_vs_dense(cout: int, cin: int, ksize: int, height: int, width: int,
                 sparsities=(0.35, 0.5, 0.7), isa: str = "avx512", repeats: int = 7,
                 seed: int = 0, clock=time.perf_counter, input_planes: int | None = None,
                 fmt: str = "csr") -> dict:
    """{"dense": ms, s: ms, ...} for one layer shape (dense weights have no zeros),
    and {("model", s): sparse / dense time predicted by the cost model of fmt
    (_core.csr_relative_cost or _core.bcsr_relative_cost)}; for bcsr also
    {("csr", s): ms} of the CSR kernel on the same weights. input_planes: see time_layers."""
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(cout).astype(np.float32)
    layers = {"dense": _core.Conv2d(random_sparse_weight(rng, cout, cin, ksize, 0.0), bias,
                                    isa=isa, format="dense")}
    model = {}
    for s in sparsities:
        if fmt == "bcsr":
            weight = random_block_sparse_weight(rng, cout, cin, ksize, s, bcsr_block())
            model[("model", s)] = _core.bcsr_relative_cost(weight, isa)
        else:
            weight = random_sparse_weight(rng, cout, cin, ksize, s)
            model[("model", s)] = _core.csr_relative_cost(weight, isa)
        layers[s] = _core.Conv2d(weight, bias, isa=isa, format=fmt)
        if fmt == "bcsr":   # the unstructured kernel on the same weights
            layers[("csr", s)] = _core.Conv2d(weight, bias, isa=isa, format="csr")
    times = time_layers(layers, cin, cout, height, width, repeats, seed, clock, input_planes)
    return {**times, **model}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--isa", default="avx512")
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--target", type=float, default=1.3)
    parser.add_argument("--cpu-time", action="store_true",
                        help="measure CPU time of all threads (steadier on a busy machine)")
    parser.add_argument("--input-planes", type=int, default=None,
                        help="read every input channel from this many distinct planes, which "
                             "then stay in L1 (default: every channel its own plane)")
    parser.add_argument("--format", default="csr", choices=("csr", "bcsr"))
    parser.add_argument("--sparsities", default="0.35,0.5,0.7,0.9")
    parser.add_argument("--shapes", default="64:64:3,256:64:1",
                        help="cin:cout:k, comma separated")
    parser.add_argument("--peak", action="store_true",
                        help="GFLOP/s against the FMA peak of the level (csrc/bench/peak*)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    _core.set_num_threads(args.threads)
    sparsities = tuple(float(v) for v in args.sparsities.split(","))
    peak = None
    if args.peak:
        from sparsr import _peak
        # Every kernel thread; the best of three (a busy machine only lowers it).
        peak = max(_peak.fma_peak_gflops(args.isa, 0.5) for _ in range(3))
    shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    for cin, cout, ksize in shapes:
        ms = csr_vs_dense(cout, cin, ksize, args.height, args.width, sparsities, args.isa,
                          args.repeats, clock=clock, input_planes=args.input_planes,
                          fmt=args.format)
        dense_macs = args.height * args.width * cout * cin * ksize * ksize
        print(f"{cin}->{cout} {ksize}x{ksize} {args.height}x{args.width} {args.isa} "
              f"{args.threads} threads, {'cpu' if args.cpu_time else 'wall'} time"
              f"{'' if args.input_planes is None else f', inputs from {args.input_planes} planes'}: "
              f"dense {ms['dense']:.2f} ms"
              + (f", {2e-6 * dense_macs / ms['dense']:.1f} GFLOP/s = "
                 f"{100 * 2e-6 * dense_macs / ms['dense'] / peak:.0f} % of the "
                 f"{peak:.0f} GFLOP/s FMA peak" if peak else ""))
        for s in sparsities:
            ratio = ms[s] / ((1.0 - s) * ms["dense"])
            verdict = "ok" if ratio <= args.target else "SLOW"
            flops = 2e-6 * (1.0 - s) * dense_macs / ms[s]
            print(f"  {args.format} s={s:.2f}: {ms[s]:7.2f} ms  {args.format}/((1-s) dense) = "
                  f"{ratio:.2f} (target {args.target}) {verdict:4}  {args.format}/dense = "
                  f"{ms[s] / ms['dense']:.2f} (cost model {ms[('model', s)]:.2f})"
                  + (f"  {flops:.1f} GFLOP/s = {100 * flops / peak:.0f} % of peak" if peak else "")
                  + (f"  csr on these weights / dense = {ms[('csr', s)] / ms['dense']:.2f}"
                     if ("csr", s) in ms else ""))


if __name__ == "__main__":
    main()
