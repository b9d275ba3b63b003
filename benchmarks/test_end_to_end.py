"""End-to-end x2 upscale of a 640x360 photo: sparsr dense, SMSR with masks,
SparSMSR 1b/2b/3b, SMSR + 2:4, and PyTorch's own dense run of the same network
(channels_last, the strongest PyTorch CPU configuration), all in one session.
Peak RSS of each is measured in a fresh process, as its VmHWM (ru_maxrss would
carry over the RSS of the pytest process that started it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TOOLS, Row

ROUNDS = 5

_RSS_SPARSR = """
import sys, numpy as np, sparsr
m = sparsr.load(sys.argv[1])
m.forward(np.load(sys.argv[3]), sys.argv[2])
print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024)
"""

_RSS_TORCH = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import torch_smsr
from sparsr import checkpoint
torch.set_num_threads(2)
_, tensors, _ = checkpoint.load(sys.argv[2])
net = torch_smsr.SMSR.from_state_dict(tensors).eval().to(memory_format=torch.channels_last)
x = torch.from_numpy(np.load(sys.argv[3])).permute(2, 0, 1)[None].float()
with torch.inference_mode():
    net(x.contiguous(memory_format=torch.channels_last))
print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024)
"""


def _peak_rss_mb(code, *args):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True)
    return float(r.stdout.split()[-1]) if r.returncode == 0 else None


def _bench(benchmark, fn):
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    return benchmark.stats.stats.median


def _sparsr_row(benchmark, results, name, path, image, image_file, mode, quality):
    import sparsr
    model = sparsr.load(path)
    fwd = model.forward(image, mode)
    median = _bench(benchmark, lambda: model.forward(image, mode))
    row = Row(name, median, macs=fwd.macs, nonzeros=model.info()["conv_nonzeros"])
    row.psnr, row.ssim = quality(path, mode)
    row.peak_rss_mb = _peak_rss_mb(_RSS_SPARSR, path, mode, image_file)
    results.add(row)
    benchmark.extra_info.update(macs=fwd.macs)


def _torch_dense_run(smsr_path, image):
    """(torch module, a function running PyTorch's dense SMSR on image in channels_last)."""
    torch = pytest.importorskip("torch", reason="the PyTorch baseline needs torch")
    sys.path.insert(0, str(TOOLS))
    import torch_smsr

    from sparsr import checkpoint
    _, tensors, _ = checkpoint.load(smsr_path)
    net = torch_smsr.SMSR.from_state_dict(tensors).eval().to(memory_format=torch.channels_last)
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            return net(x)

    return torch, run


def test_pytorch_dense_channels_last(benchmark, results, smsr_path, bench_image,
                                     bench_image_file):
    import sparsr
    torch, run = _torch_dense_run(smsr_path, bench_image)
    torch.set_num_threads(2)
    median = _bench(benchmark, run)
    row = Row("PyTorch dense (channels_last)", median,
              macs=sparsr.load(smsr_path).dense_macs(*bench_image.shape[:2]))
    row.peak_rss_mb = _peak_rss_mb(_RSS_TORCH, TOOLS, smsr_path, bench_image_file)
    results.add(row)


def test_sparsr_dense(benchmark, results, smsr_path, bench_image, bench_image_file,
                      set14_quality):
    _sparsr_row(benchmark, results, "sparsr dense", smsr_path, bench_image, bench_image_file,
                "dense", set14_quality)


def test_smsr_masks(benchmark, results, smsr_path, bench_image, bench_image_file, set14_quality):
    _sparsr_row(benchmark, results, "SMSR (masks)", smsr_path, bench_image, bench_image_file,
                "mask", set14_quality)


@pytest.mark.parametrize("variant", ["1b", "2b", "3b"])
def test_sparsmsr(benchmark, results, sparsmsr_paths, bench_image, bench_image_file,
                  set14_quality, variant):
    if variant not in sparsmsr_paths:
        pytest.skip(f"SparSMSR {variant} was not built")
    _sparsr_row(benchmark, results, f"SparSMSR {variant}", sparsmsr_paths[variant], bench_image,
                bench_image_file, "mask", set14_quality)


def test_smsr_2of4(benchmark, results, nm_paths, bench_image, bench_image_file, set14_quality):
    _sparsr_row(benchmark, results, "SMSR + 2:4", nm_paths["2:4"], bench_image, bench_image_file,
                "mask", set14_quality)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("model", ["sparsr dense", "SMSR (masks)", "SparSMSR 3b",
                                   "PyTorch dense (channels_last)"])
def test_thread_scaling(benchmark, results, smsr_path, sparsmsr_paths, bench_image, model,
                        threads):
    """The same upscale on 1 and on 2 threads; the summary prints the speed-up."""
    if model.startswith("PyTorch"):
        torch, run = _torch_dense_run(smsr_path, bench_image)
        set_threads = torch.set_num_threads
    else:
        import sparsr
        if model == "SparSMSR 3b":
            if "3b" not in sparsmsr_paths:
                pytest.skip("SparSMSR 3b was not built")
            path = sparsmsr_paths["3b"]
        else:
            path = smsr_path
        m = sparsr.load(path)
        mode = "dense" if model == "sparsr dense" else "mask"

        def run():
            return m.forward(bench_image, mode)

        set_threads = sparsr.set_num_threads
    set_threads(threads)
    try:
        median = _bench(benchmark, run)
    finally:
        set_threads(2)
    results.scaling[(model, threads)] = median
