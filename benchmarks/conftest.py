"""Benchmark session: shared inputs, models built once, and the Table-4 style
summary printed at the end.

Run:  pytest benchmarks/ --benchmark-only
Times are CPU wall times of one 640x360 -> 1280x720 upscale (the SparSMSR
paper's setting), median of several rounds, with every ratio taken against
baselines measured in the same session. Needs ../shared (or SPARSR_SHARED);
the PyTorch rows need torch, the OpenVINO and ONNX Runtime ones (test_peers.py)
the `bench` extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
INPUT_H, INPUT_W = 360, 640

# Table 4 of the SparSMSR paper (Set14, x2): CPU time relative to SMSR w/o SMM.
PAPER_TABLE4 = {
    "sparsr dense": {"params": "926K", "flops": 1.00, "cpu": 1.00, "psnr": 33.64, "ssim": 0.9180},
    "SMSR (masks)": {"params": "985K", "flops": 0.63, "cpu": 0.79, "psnr": 33.62, "ssim": 0.9179},
    "SparSMSR 2b": {"params": "808K", "flops": 0.54, "cpu": 0.78, "psnr": 33.60, "ssim": 0.9172},
    "SparSMSR 3b": {"params": "727K", "flops": 0.49, "cpu": 0.68, "psnr": 33.55, "ssim": 0.9171},
}


def shared_root() -> Path:
    return Path(os.environ.get("SPARSR_SHARED", REPO.parent / "shared"))


@dataclass
class Row:
    """One end-to-end measurement for the summary table."""
    name: str
    median_s: float
    macs: int | None = None
    nonzeros: int | None = None
    psnr: float | None = None
    ssim: float | None = None
    peak_rss_mb: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class PeerRow:
    """One network timed by sparsr and its peers in interleaved rounds."""
    model: str
    scale: int
    rounds: int
    medians: dict[str, float]       # engine -> median s
    diffs: dict[str, float]         # engine -> max abs output difference from `reference`, 0..255
    reference: str
    default_precision: str | None   # OpenVINO's own choice on this CPU
    load: tuple[float, float]       # 1-minute load average before and after
    notes: list[str] = field(default_factory=list)


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.peers: list[PeerRow] = []
        self.kernels: list[dict] = []
        self.scaling: dict[tuple[str, int], float] = {}  # (model, threads) -> median s
        self.notes: list[str] = []
        self.peak_gflops: float | None = None
        self.load_peak_gflops: float | None = None

    def add(self, row: Row) -> None:
        self.rows[row.name] = row


RESULTS = Results()
SESSION_LOAD = os.getloadavg()


def pytest_collection_modifyitems(config, items):
    """The peers of the networks outside the default set run only when a -k
    expression is given (which then selects among all of them)."""
    if config.getoption("keyword"):
        return
    from peers import MODELS
    extra = {m.id for m in MODELS if not m.default}
    drop = [item for item in items if getattr(item, "originalname", None) == "test_peers"
            and item.callspec.id in extra]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [item for item in items if item not in drop]


@pytest.fixture(scope="session")
def results() -> Results:
    return RESULTS


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "models" / "smsr_x2_official.pt").is_file():
        pytest.skip(f"shared data not found at {root} (set SPARSR_SHARED)")
    return root


@pytest.fixture(scope="session")
def bench_image(shared_dir) -> np.ndarray:
    """A real photo as a 640x360 input: Set14 'monarch' (768x512), centre crop."""
    from PIL import Image
    with Image.open(shared_dir / "data" / "Set14" / "HR" / "monarch.png") as im:
        im = im.convert("RGB")
        left, top = (im.width - INPUT_W) // 2, (im.height - INPUT_H) // 2
        return np.asarray(im.crop((left, top, left + INPUT_W, top + INPUT_H))).copy()


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench")


def _run_tool(*args) -> None:
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


@pytest.fixture(scope="session")
def smsr_path(shared_dir, work_dir) -> Path:
    pytest.importorskip("torch", reason="converting the PyTorch weights needs torch")
    out = work_dir / "smsr_x2.pt"
    _run_tool(TOOLS / "convert.py", shared_dir / "models" / "smsr_x2_official.pt", "-o", out)
    return out


@pytest.fixture(scope="session")
def sparsmsr_paths(smsr_path, work_dir) -> dict[str, Path]:
    """SparSMSR 1a-3b made by tools/make_sparsmsr.py from the sensitivities that
    tools/sensitivity.py measured (Table 1, kept in tools/data/)."""
    tool = TOOLS / "make_sparsmsr.py"
    if not tool.is_file():
        pytest.skip("tools/make_sparsmsr.py is not available")
    out = work_dir / "sparsmsr"
    _run_tool(tool, "--base", smsr_path, "--sensitivity",
              TOOLS / "data" / "sensitivity_smsr_x2_psnr.json", "--out-dir", out)
    paths = {p.stem.split("_")[-1]: p for p in out.glob("sparsmsr_*.pt")}
    if not paths:
        pytest.skip("make_sparsmsr.py produced no models")
    return paths


@pytest.fixture(scope="session")
def nm_paths(smsr_path, work_dir) -> dict[str, Path]:
    """SMSR with one-shot 2:4 weights, made by tools/nm_prune.py."""
    tool = TOOLS / "nm_prune.py"
    if not tool.is_file():
        pytest.skip("tools/nm_prune.py is not available")
    out = work_dir / "smsr_2of4.pt"
    _run_tool(tool, smsr_path, "-o", out, "--n", 2, "--m", 4)
    return {"2:4": out}


def _evaluate_set14(path: Path, mode: str, shared_dir: Path,
                    cache_file: Path) -> tuple[float, float]:
    """Set14 mean PSNR/SSIM of a checkpoint, cached by file content and mode."""
    import hashlib

    import sparsr
    from sparsr import metrics

    key = hashlib.sha1(path.read_bytes()).hexdigest() + "-" + mode
    cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    if key not in cache:
        model = sparsr.load(path)
        ps, ss = [], []
        base = shared_dir / "data" / "Set14"
        from PIL import Image
        for hr_path in sorted((base / "HR").glob("*.png")):
            with Image.open(hr_path) as im:
                hr = np.asarray(im.convert("RGB"))
            with Image.open(base / "LR_bicubic" / "X2" / f"{hr_path.stem}x2.png") as im:
                lr = np.asarray(im.convert("RGB"))
            sr = model.upscale(lr, mode=mode)
            ps.append(metrics.psnr_y(sr, hr, 2))
            ss.append(metrics.ssim_y(sr, hr, 2))
        cache[key] = [float(np.mean(ps)), float(np.mean(ss))]
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    return tuple(cache[key])


@pytest.fixture(scope="session")
def set14_quality(shared_dir):
    cache_file = REPO / "artifacts" / "set14_quality_cache.json"
    return lambda path, mode="mask": _evaluate_set14(Path(path), mode, shared_dir, cache_file)


@pytest.fixture(scope="session")
def bench_image_file(bench_image, work_dir) -> Path:
    """The benchmark image as .npy, for measurements in fresh processes."""
    path = work_dir / "bench_image.npy"
    np.save(path, bench_image)
    return path


def _fmt(v, spec, missing="–"):
    return missing if v is None else format(v, spec)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = RESULTS.rows
    if not rows and not RESULTS.kernels and not RESULTS.scaling and not RESULTS.peers:
        return
    tr = terminalreporter
    if rows:
        _print_table4(tr, rows)
    if RESULTS.peers:
        _print_peers(tr, RESULTS.peers)
    _print_rest(tr, rows)


def _print_table4(tr, rows):
    tr.section("sparsr vs Table 4 of the SparSMSR paper (x2, 640x360 -> 1280x720)")
    dense = rows.get("sparsr dense")
    torch_row = rows.get("PyTorch dense (channels_last)")
    # OpenVINO's f32 dense run of the same network, from test_peers.py.
    smsr_peers = next((p for p in RESULTS.peers if p.model == "smsr_x2"), None)
    ov_f32 = smsr_peers.medians.get("OpenVINO f32") if smsr_peers else None
    tr.write_line("| model | nonzero params | MACs (G) | MACs ratio | time (s) | time vs sparsr dense "
                  "| time vs PyTorch dense | time vs OpenVINO f32 dense | Set14 PSNR/SSIM "
                  "| paper FLOPs / CPU time ratio |")
    tr.write_line("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        macs_ratio = (r.macs / dense.macs) if (dense and dense.macs and r.macs) else None
        vs_dense = r.median_s / dense.median_s if dense else None
        vs_torch = r.median_s / torch_row.median_s if torch_row else None
        vs_ov = r.median_s / ov_f32 if ov_f32 else None
        paper = PAPER_TABLE4.get(name)
        paper_s = f"{paper['flops']:.2f}x / {paper['cpu']:.2f}x" if paper else ""
        quality = (f"{r.psnr:.2f}/{r.ssim:.4f}" if r.psnr is not None else "–")
        nz = f"{r.nonzeros / 1000:.0f}K" if r.nonzeros else "–"
        if paper:
            nz += f" (paper {paper['params']})"
        tr.write_line(
            f"| {name} | {nz} | {_fmt(r.macs and r.macs / 1e9, '.2f')} | {_fmt(macs_ratio, '.2f')}x "
            f"| {r.median_s:.3f} | {_fmt(vs_dense, '.2f')}x | {_fmt(vs_torch, '.2f')}x "
            f"| {_fmt(vs_ov, '.2f')}x | {quality} | {paper_s} |")
    if ov_f32:
        tr.write_line(f"OpenVINO f32 dense: {ov_f32:.3f} s, in test_peers.py's interleaved rounds "
                      "(the ratios within those rounds are in the next table)")


PEER_ENGINES = ("OpenVINO f32", "OpenVINO default", "ONNX Runtime")


def same_precision_peer(run: str, default_precision: str | None) -> str | None:
    """The OpenVINO run at sparsr run `run`'s precision: its f32 run for sparsr's
    f32 runs, its default run for a bf16 one when that default is bf16."""
    if run.endswith(" bf16"):
        return "OpenVINO default" if default_precision == "bf16" else None
    return "OpenVINO f32"


def _ratio(t: float, peer: float | None) -> str:
    return _fmt(peer and t / peer, ".2f") + ("x" if peer else "")


def _print_peers(tr, peer_rows):
    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    precision = next((p.default_precision for p in peer_rows if p.default_precision), None)
    default = f"OpenVINO default ({precision})" if precision else "OpenVINO default"
    tr.section("sparsr vs OpenVINO and ONNX Runtime (640x360 input, 2 threads, "
               "interleaved rounds, medians)")
    tr.write_line(f"OpenVINO {version('openvino')}, ONNX Runtime {version('onnxruntime')}; "
                  "ratios are sparsr's time over the peer's, within the same rounds. "
                  "'same precision': a sparsr f32 run against OpenVINO f32, a bf16 run against "
                  f"OpenVINO's default when that is bf16 ({precision or 'unknown'} here)")
    tr.write_line(f"| model | sparsr run | sparsr (s) | vs OpenVINO, same precision "
                  f"| vs OpenVINO f32 | vs {default} "
                  f"| vs ONNX Runtime | OpenVINO f32 (s) | {default} (s) | ONNX Runtime (s) "
                  "| rounds | max abs diff vs OpenVINO f32 (0..255) |")
    tr.write_line("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for p in peer_rows:
        peer = {e: p.medians.get(e) for e in PEER_ENGINES}
        for run, t in p.medians.items():
            if not run.startswith("sparsr "):
                continue
            ratios = " | ".join(_ratio(t, peer[e]) for e in PEER_ENGINES)
            same = _ratio(t, peer.get(same_precision_peer(run, p.default_precision)))
            times = " | ".join(_fmt(peer[e], ".3f") for e in PEER_ENGINES)
            diff = _fmt(p.diffs.get(run), ".1e")
            if run in p.diffs and p.reference != "OpenVINO f32":
                diff += f" (vs {p.reference})"
            tr.write_line(f"| {p.model} | {run.removeprefix('sparsr ')} | {t:.3f} | {same} "
                          f"| {ratios} | {times} | {p.rounds} | {diff} |")
    peer_diffs = [f"{p.model} " + ", ".join(f"{e} {p.diffs[e]:.3g}" for e in PEER_ENGINES
                                            if e in p.diffs)
                  for p in peer_rows if p.reference == "OpenVINO f32"]
    if peer_diffs:
        tr.write_line("Peers' own output differences from OpenVINO f32 (0..255): "
                      + "; ".join(peer_diffs))
    loads = [x for p in peer_rows for x in p.load]
    tr.write_line(f"1-minute load average: {SESSION_LOAD[0]:.1f} at the session's start, "
                  f"{min(loads):.1f}..{max(loads):.1f} during these rounds "
                  f"({os.cpu_count()} CPUs)")
    for p in peer_rows:
        for note in p.notes:
            tr.write_line(f"{p.model}: {note}")


def _print_rest(tr, rows):
    if any(r.peak_rss_mb for r in rows.values()):
        tr.section("peak memory (RSS) of one 640x360 upscale, fresh process")
        for name, r in rows.items():
            if r.peak_rss_mb:
                tr.write_line(f"  {name:<34} {r.peak_rss_mb:8.0f} MB  {r.extra.get('rss_note', '')}")
    if RESULTS.kernels:
        tr.section("kernels at SMSR layer shapes (360x640, 2 threads)")
        if RESULTS.peak_gflops:
            tr.write_line(f"FMA peak measured in this run: {RESULTS.peak_gflops:.1f} GFLOP/s")
        if RESULTS.peak_gflops and RESULTS.load_peak_gflops:
            tr.write_line(f"FMA with one L1 vector load each: {RESULTS.load_peak_gflops:.1f} GFLOP/s "
                          f"({100 * RESULTS.load_peak_gflops / RESULTS.peak_gflops:.0f}% of peak), "
                          "the ceiling of a kernel whose input loads are not shared")
        tr.write_line("| kernel | shape | kept MAC fraction | time (ms) | GFLOP/s | % of peak "
                      "| time / (kept x dense) |")
        tr.write_line("|---|---|---|---|---|---|---|")
        for k in RESULTS.kernels:
            tr.write_line(f"| {k['name']} | {k['shape']} | {k['kept']:.3f} | {k['ms']:.2f} "
                          f"| {k['gflops']:.1f} | {_fmt(k.get('peak_pct'), '.0f')}% "
                          f"| {_fmt(k.get('efficiency'), '.2f')} |")
    if RESULTS.scaling:
        tr.section("thread scaling (640x360 upscale, median s)")
        tr.write_line("| model | 1 thread | 2 threads | speed-up |")
        tr.write_line("|---|---|---|---|")
        for name in dict.fromkeys(k[0] for k in RESULTS.scaling):
            one, two = RESULTS.scaling.get((name, 1)), RESULTS.scaling.get((name, 2))
            speedup = one / two if one and two else None
            tr.write_line(f"| {name} | {_fmt(one, '.3f')} | {_fmt(two, '.3f')} "
                          f"| {_fmt(speedup, '.2f')}x |")
    for note in RESULTS.notes:
        tr.write_line(note)
