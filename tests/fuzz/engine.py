"""The fuzzing loop: forked workers run mutated inputs in-process, a watchdog
in the parent kills a worker that crashes or takes too long and keeps its input.

The parent imports everything (sparsr, numpy, torch, onnx) and makes the seeds
once, then forks workers; each worker draws its inputs from its own seeded
generator, writes each to its own directory, reports "begin" and "end" lines
over a pipe and measures the input's wall time and its peak RSS growth (the
kernel's high-water mark, reset before each input through /proc/self/clear_refs).
A worker is replaced after a fixed number of inputs. Findings: an exception
that is not sparsr's own, a warning, code run from a pickle, a run over the
time limit, a peak RSS growth over 4x the file size + 200 MB, a crash (the
worker died) or a hang (killed by the watchdog). Each finding's input is saved
with a note of what happened.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import mutators, targets

MB = 1 << 20
RSS_SLACK = 200 * MB
RSS_FACTOR = 4
MUTATION_TIMEOUT = 20.0


def rss_limit(file_size: int) -> int:
    return RSS_FACTOR * file_size + RSS_SLACK


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system time of a process (all its threads), as time.process_time
    gives it inside."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("inf")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class Stats:
    inputs: int = 0
    by_target: dict = field(default_factory=dict)
    findings: list = field(default_factory=list)
    max_seconds: float = 0.0      # CPU time of one input
    max_wall: float = 0.0
    max_rss_growth: int = 0
    max_rss_ratio: float = 0.0   # growth / limit
    total_seconds: float = 0.0
    elapsed: float = 0.0
    mutator_timeouts: int = 0     # workers replaced while making an input

    def count(self, target: str, outcome: str) -> None:
        self.inputs += 1
        t = self.by_target.setdefault(target, {})
        t[outcome] = t.get(outcome, 0) + 1

    def kinds(self) -> dict:
        out = {"exception": 0, "slow": 0, "crash": 0, "timeout": 0, "memory": 0}
        for f in self.findings:
            out[f["kind"]] = out.get(f["kind"], 0) + 1
        return out


def load_seeds(wanted) -> dict[str, dict[str, bytes]]:
    from . import seeds
    makers = {"checkpoint": seeds.checkpoint_seeds, "onnx": seeds.onnx_seeds,
              "pth": seeds.pth_seeds}
    return {t: makers[t]() for t in wanted}


def preload(wanted) -> None:
    """Imports in the parent what the workers use, so that a fork starts warm."""
    import numpy  # noqa: F401
    import sparsr  # noqa: F401
    from sparsr import importers  # noqa: F401
    if "onnx" in wanted:
        import onnx  # noqa: F401
        import onnx.shape_inference  # noqa: F401
        from sparsr.importers import onnx_import  # noqa: F401
    if "pth" in wanted or "onnx" in wanted:
        import torch
        torch.set_num_threads(1)
        from sparsr.importers import pth  # noqa: F401


# -- the worker ----------------------------------------------------------------------

def _worker(wfd: int, workdir: Path, findings: Path, seed: str, seeds: dict,
            weights: dict, count: int, timeout: float) -> None:
    import sparsr

    sparsr.set_num_threads(1)
    # A runaway allocation fails in this worker (MemoryError, a finding)
    # instead of taking the machine: address space capped a few GB above now.
    vm = _status_kb("VmSize:") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 30), resource.RLIM_INFINITY))
    rng = random.Random(seed)
    names = sorted(weights)
    can_reset = _reset_peak()
    out = os.fdopen(wfd, "w", buffering=1)
    for _ in range(count):
        out.write(json.dumps({"mutating": True}) + "\n")
        target = rng.choices(names, [weights[n] for n in names])[0]
        strategy, data = mutators.mutate(target, seeds[target], rng)
        path = workdir / targets.FILE_NAMES[target]
        path.write_bytes(data)
        if can_reset:
            _reset_peak()
        rss0 = _status_kb("VmRSS:") * 1024
        cpu0 = time.process_time()
        out.write(json.dumps({"begin": target, "strategy": strategy, "size": len(data),
                              "cpu": cpu0}) + "\n")
        start = time.perf_counter()
        detail = None
        try:
            outcome = targets.run(target, path, workdir)
        except targets.Finding as e:
            outcome = "exception"
            cause = e.__cause__ or e
            detail = str(e) + "\n" + "".join(traceback.format_exception(cause)[-12:])
        wall = time.perf_counter() - start
        seconds = time.process_time() - cpu0
        growth = _status_kb("VmHWM:") * 1024 - rss0 if can_reset else 0
        kind = None
        if outcome == "exception":
            kind = "exception"
        elif seconds > timeout:
            kind, detail = "slow", f"{seconds:.2f} s of CPU time ({wall:.2f} s wall)"
        elif growth > rss_limit(len(data)):
            kind, detail = "memory", (f"peak RSS grew {growth / MB:.0f} MB for a "
                                      f"{len(data)}-byte file")
        if kind:
            save_finding(findings, target, kind, data, f"{strategy}\n{detail}")
        out.write(json.dumps({"end": outcome, "kind": kind, "seconds": seconds, "wall": wall,
                              "rss": growth,
                              "detail": (detail or "")[:300]}) + "\n")
    out.close()


def save_finding(findings: Path, target: str, kind: str, data: bytes, note: str) -> Path:
    digest = hashlib.sha1(data).hexdigest()[:16]
    d = findings / target
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{kind}-{digest}{targets.EXTENSIONS[target]}"
    path.write_bytes(data)
    path.with_suffix(path.suffix + ".txt").write_text(note + "\n")
    return path


# -- the parent ----------------------------------------------------------------------

@dataclass
class _Worker:
    pid: int
    rfd: int
    workdir: Path
    buf: bytes = b""
    current: dict | None = None
    since: float = 0.0
    mutating_since: float | None = None


def fuzz(seconds: float, seed: int, *, max_inputs: int | None = None, workers: int = 2,
         wanted=targets.TARGETS, weights: dict | None = None, findings: Path,
         timeout: float = 2.0, per_worker: int = 3000, progress=print) -> Stats:
    weights = {t: (weights or {}).get(t, {"checkpoint": 5, "onnx": 3, "pth": 3}[t])
               for t in wanted}
    preload(wanted)
    seeds = load_seeds(wanted)
    stats = Stats()
    root = Path(tempfile.mkdtemp(prefix="sparsr-fuzz-"))
    findings = Path(findings)
    findings.mkdir(parents=True, exist_ok=True)
    generation = 0
    pool: list[_Worker] = []
    deadline = time.monotonic() + seconds
    last_report = time.monotonic()
    started = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()

    def spawn(slot: int) -> _Worker:
        nonlocal generation
        generation += 1
        workdir = root / f"w{slot}"
        workdir.mkdir(exist_ok=True)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                       # the worker
            code = 0
            try:
                os.close(r)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                log = os.open(workdir / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(log, 2)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _worker(w, workdir, findings, f"{seed}:{generation}", seeds, weights,
                        per_worker, timeout)
            except BaseException:
                traceback.print_exc()
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        return _Worker(pid, r, workdir)

    def lost(wk: _Worker, kind: str, detail: str) -> None:
        """A worker that died or was killed while running an input."""
        cur = wk.current
        if cur is None:
            return
        data = (wk.workdir / targets.FILE_NAMES[cur["begin"]]).read_bytes()
        path = save_finding(findings, cur["begin"], kind, data, f"{cur['strategy']}\n{detail}")
        stats.count(cur["begin"], kind)
        stats.findings.append({"kind": kind, "target": cur["begin"], "path": str(path),
                               "detail": detail})
        progress(f"  finding: {kind} ({cur['begin']}, {cur['strategy']}): {detail} -> {path}")

    try:
        pool = [spawn(i) for i in range(workers)]
        while time.monotonic() < deadline and (max_inputs is None or stats.inputs < max_inputs):
            ready, _, _ = select.select([wk.rfd for wk in pool], [], [], 0.05)
            now = time.monotonic()
            for i, wk in enumerate(pool):
                if wk.rfd in ready:
                    chunk = os.read(wk.rfd, 65536)
                    if not chunk:                       # the worker ended or died
                        _, status = os.waitpid(wk.pid, 0)
                        os.close(wk.rfd)
                        if wk.current is not None:
                            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                            why = (f"killed by signal {sig} ({signal.Signals(sig).name})"
                                   if sig else f"exit status {os.WEXITSTATUS(status)}")
                            lost(wk, "crash", why)
                        elif status != 0:
                            log = (wk.workdir / "stderr.log").read_text(errors="replace")
                            raise RuntimeError(f"a fuzz worker failed outside an input:\n{log}")
                        pool[i] = spawn(i)
                        continue
                    wk.buf += chunk
                    while b"\n" in wk.buf:
                        line, wk.buf = wk.buf.split(b"\n", 1)
                        msg = json.loads(line)
                        if "mutating" in msg:
                            wk.mutating_since = now
                            continue
                        if "begin" in msg:
                            wk.current, wk.since, wk.mutating_since = msg, now, None
                            continue
                        cur, wk.current = wk.current, None
                        size = cur["size"]
                        stats.count(cur["begin"], msg["kind"] or msg["end"])
                        stats.total_seconds += msg["seconds"]
                        stats.max_seconds = max(stats.max_seconds, msg["seconds"])
                        stats.max_wall = max(stats.max_wall, msg["wall"])
                        stats.max_rss_growth = max(stats.max_rss_growth, msg["rss"])
                        stats.max_rss_ratio = max(stats.max_rss_ratio,
                                                  msg["rss"] / rss_limit(size))
                        if msg["kind"]:
                            stats.findings.append({"kind": msg["kind"], "target": cur["begin"],
                                                   "detail": msg["detail"],
                                                   "strategy": cur["strategy"]})
                            progress(f"  finding: {msg['kind']} ({cur['begin']}, "
                                     f"{cur['strategy']}): {msg['detail'][:200]}")
                elif (wk.current is None and wk.mutating_since is not None
                      and now - wk.mutating_since > MUTATION_TIMEOUT):
                    # The fuzzer's own fault (a mutation that takes long), not
                    # sparsr's: the worker is replaced, nothing is counted.
                    os.kill(wk.pid, signal.SIGKILL)
                    os.waitpid(wk.pid, 0)
                    os.close(wk.rfd)
                    stats.mutator_timeouts += 1
                    pool[i] = spawn(i)
                elif wk.current is not None and now - wk.since > timeout:
                    # Over the limit in CPU time (the machine may be shared:
                    # wall time alone would blame an input for others' load),
                    # or in wall time 5 times over (a hang that uses no CPU).
                    cpu = _cpu_seconds(wk.pid) - wk.current["cpu"]
                    if cpu > timeout or now - wk.since > 5 * timeout:
                        os.kill(wk.pid, signal.SIGKILL)
                        os.waitpid(wk.pid, 0)
                        os.close(wk.rfd)
                        lost(wk, "timeout", f"still running after {cpu:.1f} s of CPU time, "
                                            f"{now - wk.since:.1f} s wall: killed")
                        pool[i] = spawn(i)
            if now - last_report > 30:
                last_report = now
                rate = stats.inputs / max(now - started, 1e-9)
                progress(f"  {stats.inputs} inputs, {len(stats.findings)} findings, "
                         f"{rate:.0f}/s")
    finally:
        for wk in pool:
            try:
                os.kill(wk.pid, signal.SIGKILL)
                os.waitpid(wk.pid, 0)
                os.close(wk.rfd)
            except OSError:
                pass
        shutil.rmtree(root, ignore_errors=True)
    stats.elapsed = time.monotonic() - started
    return stats


def replay(paths, progress=print) -> int:
    """Runs saved inputs in this process; the number that still misbehave."""
    bad = 0
    with tempfile.TemporaryDirectory(prefix="sparsr-replay-") as d:
        for p in paths:
            p = Path(p)
            target = target_of(p)
            start = time.perf_counter()
            try:
                outcome = targets.run(target, _named(p, target, Path(d)), d)
            except targets.Finding as e:
                bad += 1
                progress(f"{p}: FINDING {e}")
                traceback.print_exception(e.__cause__ or e)
                continue
            progress(f"{p}: {outcome} in {time.perf_counter() - start:.3f} s")
    return bad


def target_of(path: Path) -> str:
    for t, ext in targets.EXTENSIONS.items():
        if path.name.endswith(ext) and (path.parent.name == t or t in path.parts):
            return t
    for t, ext in targets.EXTENSIONS.items():
        if path.name.endswith(ext):
            return t
    raise ValueError(f"{path}: not a fuzz input (.pt, .onnx or .pth)")


def _named(path: Path, target: str, d: Path) -> Path:
    """The input under the file name the fuzzer gave it (the .pth scale hint)."""
    dst = d / targets.FILE_NAMES[target]
    shutil.copyfile(path, dst)
    return dst
