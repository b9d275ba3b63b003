"""Times the N:M convolution kernels against the dense kernel of the same ISA.

    python benchmarks/bench_nm_kernel.py [--threads 2] [--repeats 7] [--isa avx512]

Prints, per shape and pattern, the median time, its ratio to the dense kernel
measured in the same run, and the goal ratio (1.3 x N/M; 0.60 for 2:4).
`time_conv` is the reusable measurement (one layer, one shape, one format).
"""

import argparse
import statistics
import time

import numpy as np

from sparsr import _core


def random_nm_weight(cout, cin, ksize, n, m, rng):
    """OIHW float32 weights keeping n random nonzeros of every m input channels (a short
    last group when m does not divide cin: min(n, its width))."""
    if m and cin % m:
        wide = random_nm_weight(cout, -(-cin // m) * m, ksize, n, m, rng)
        w = np.ascontiguousarray(wide[:, :cin])
        short = w[:, cin // m * m:]
        if short.shape[1] <= n:   # the short group dense, as pruning keeps it
            short[:] = rng.standard_normal(short.shape, dtype=np.float32)
        return w
    w = rng.standard_normal((cout, cin, ksize, ksize), dtype=np.float32)
    if m == 0:
        return w
    groups = w.reshape(cout, cin // m, m, ksize, ksize)
    order = np.argsort(rng.random(groups.shape), axis=2)
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :, :n], True, axis=2)
    return (groups * keep).reshape(cout, cin, ksize, ksize)


def conv_runner(cin, cout, ksize, height, width, fmt="dense", n=0, m=0, isa=None, seed=0,
                input_planes=None):
    """A function running one full-image call of one convolution layer.
    input_planes=k reads input channel i from plane i % k: with few planes the
    inputs stay in L1, which separates a kernel's own loads and arithmetic from
    the memory system."""
    rng = np.random.default_rng(seed)
    weight = random_nm_weight(cout, cin, ksize, n, m, rng)
    bias = rng.standard_normal(cout).astype(np.float32)
    layer = _core.Conv2d(weight, bias, isa=isa, format=fmt, n=n, m=m)
    src = _core.Feature.from_numpy(rng.standard_normal((cin, height, width), dtype=np.float32))
    dst = _core.Feature(cout, height, width)
    pixels = _core.PixelSet.full(height, width)

    src_view = src.view() if input_planes is None else src.view([i % input_planes for i in range(cin)])

    def run():
        layer(src_view, dst.view(), pixels, relu=True)

    run.kernel = layer.kernel
    return run


def time_interleaved(runners, repeats=7, warmup=1):
    """Wall times (seconds) of each runner; one round calls every runner once,
    so load from other processes hits all of them alike."""
    times = [[] for _ in runners]
    for round_ in range(warmup + repeats):
        for run, out in zip(runners, times):
            start = time.perf_counter()
            run()
            if round_ >= warmup:
                out.append(time.perf_counter() - start)
    return times


SHAPES = [(64, 64, 3, 360, 640), (256, 64, 1, 360, 640)]
PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (8, 32), (4, 32), (3, 8), (5, 16)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--isa", default=None, help="scalar, avx2 or avx512 (default: active)")
    parser.add_argument("--patterns", default=None, help="e.g. 2:4,8:32")
    parser.add_argument("--height", type=int, default=360, help="image height (width 640)")
    parser.add_argument("--shapes", default=None,
                        help="cin,cout,k;... e.g. 50,50,3 (RFDN: M does not divide 50)")
    parser.add_argument("--input-planes", type=int, default=None,
                        help="read every input channel from this many distinct planes, which "
                             "then stay in L1 (default: every channel its own plane)")
    args = parser.parse_args()
    _core.set_num_threads(args.threads)
    patterns = PATTERNS
    if args.patterns:
        patterns = [tuple(int(v) for v in p.split(":")) for p in args.patterns.split(",")]
    unrolled = set(_core.nm_unrolled_patterns())
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in sh.split(",")) + (360, 640) for sh in args.shapes.split(";")]
    for cin, cout, k, _, w in shapes:
        h = args.height
        planes = args.input_planes
        dense = conv_runner(cin, cout, k, h, w, isa=args.isa, input_planes=planes)
        sparse = [conv_runner(cin, cout, k, h, w, "nm", n, m, args.isa, input_planes=planes)
                  for n, m in patterns]
        times = time_interleaved([dense] + sparse, args.repeats)
        dense_ms = statistics.median(times[0]) * 1e3
        dense_min = min(times[0]) * 1e3
        where = "" if planes is None else f", inputs from {planes} planes"
        print(f"{cin}->{cout} {k}x{k} {h}x{w}{where}, {args.threads} threads, median of {args.repeats}: "
              f"dense {dense_ms:.2f} ms (min {dense_min:.2f}; {dense.kernel}, "
              f"{h * w * cin * cout * k * k / dense_ms / 1e6:.0f} GMAC/s)")
        for (n, m), run, t in zip(patterns, sparse, times[1:]):
            ms = statistics.median(t) * 1e3
            best = min(t) * 1e3
            # Ratio of medians, and the median of the per-round ratios (robust to load).
            round_ratio = statistics.median(a / b for a, b in zip(t, times[0]))
            goal = 0.60 if (n, m) == (2, 4) else 1.3 * n / m
            path = "kx-sets" if k == 3 else "unrolled" if (n, m) in unrolled else "generic"
            print(f"  {n:2}:{m:<2} {path:8} {ms:7.2f} ms  x{ms / dense_ms:.3f} dense "
                  f"(per round x{round_ratio:.3f}, of mins x{best / dense_min:.3f})  goal x{goal:.3f}  "
                  f"{'ok' if ms / dense_ms <= goal else 'MISSED'}  {run.kernel}")


if __name__ == "__main__":
    main()
