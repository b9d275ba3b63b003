"""Quick check of the CSR convolution kernels against the dense kernel.

Times one layer at full-frame size with the dense kernel and with the CSR
kernel at several unstructured sparsities, in the same process, and prints
csr_ms / ((1 - s) * dense_ms): the CSR kernel keeps its promise when this
ratio stays at or below the target (1.3), i.e. it turns a fraction s of zero
weights into nearly that fraction of saved time.

    python benchmarks/bench_csr_kernel.py [--threads 2] [--repeats 7] [--isa avx512]
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
                 seed: int = 0, clock=time.perf_counter, input_planes: int | None = None) -> dict:
    """{"dense": ms, s: ms, ...} for one layer shape (dense weights have no zeros),
    and {("model", s): csr / dense time predicted by _core.csr_relative_cost}.
    input_planes: see time_layers."""
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(cout).astype(np.float32)
    layers = {"dense": _core.Conv2d(random_sparse_weight(rng, cout, cin, ksize, 0.0), bias,
                                    isa=isa, format="dense")}
    model = {}
    for s in sparsities:
        weight = random_sparse_weight(rng, cout, cin, ksize, s)
        layers[s] = _core.Conv2d(weight, bias, isa=isa, format="csr")
        model[("model", s)] = _core.csr_relative_cost(weight, isa)
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
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    _core.set_num_threads(args.threads)
    sparsities = (0.35, 0.5, 0.7, 0.9)
    for cout, cin, ksize in ((64, 64, 3), (64, 256, 1)):
        ms = csr_vs_dense(cout, cin, ksize, args.height, args.width, sparsities, args.isa,
                          args.repeats, clock=clock, input_planes=args.input_planes)
        print(f"{cin}->{cout} {ksize}x{ksize} {args.height}x{args.width} {args.isa} "
              f"{args.threads} threads, {'cpu' if args.cpu_time else 'wall'} time"
              f"{'' if args.input_planes is None else f', inputs from {args.input_planes} planes'}: "
              f"dense {ms['dense']:.2f} ms")
        for s in sparsities:
            ratio = ms[s] / ((1.0 - s) * ms["dense"])
            verdict = "ok" if ratio <= args.target else "SLOW"
            print(f"  csr s={s:.2f}: {ms[s]:7.2f} ms  csr/((1-s) dense) = {ratio:.2f} "
                  f"(target {args.target}) {verdict:4}  csr/dense = {ms[s] / ms['dense']:.2f} "
                  f"(cost model {ms[('model', s)]:.2f})")


if __name__ == "__main__":
    main()
