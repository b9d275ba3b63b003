"""A process forked after sparsr used its thread pool (multiprocessing's
default start method on Linux) runs sparsr normally instead of hanging: the
child makes a pool of its own on first use (csrc/runtime/threadpool.cc)."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
import warnings

import numpy as np
import pytest

import sparsr
from sparsr import _core, checkpoint
from sparsr.graph import IO
from sparsr.importers.builder import GraphBuilder

# A child that has not answered by then is hung.
CHILD_TIMEOUT = 60


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Convs wide enough at 96x96 that every parallel_for splits into tasks."""
    rng = np.random.default_rng(3)
    sd = {}
    for name, (cout, cin) in {"a": (32, 3), "b": (32, 32), "c": (12, 32)}.items():
        sd[f"{name}.weight"] = (rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32)
        sd[f"{name}.bias"] = np.zeros(cout, np.float32)
    b = GraphBuilder(sd, IO(scale=2, range=1.0), "fork-test")
    x = b.relu(b.conv(b.input, "a"))
    model, tensors = b.finish(b.pixel_shuffle(b.conv(b.relu(b.conv(x, "b")), "c"), 2))
    path = tmp_path_factory.mktemp("fork") / "m.pt"
    checkpoint.save(path, model, tensors)
    return sparsr.load(path)


@pytest.fixture
def two_threads():
    before = _core.num_threads()
    sparsr.set_num_threads(2)
    yield
    sparsr.set_num_threads(before)


IMAGE = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)


def _digest(model, threads: int | None = None) -> str:
    if threads is not None:
        sparsr.set_num_threads(threads)
    return hashlib.sha1(model.upscale(IMAGE).tobytes()).hexdigest()


def _child(model, threads, queue):
    queue.put((_core.num_threads(), _digest(model, threads)))


def _run_children(model, n: int, threads=None) -> list[tuple[int, str]]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # 3.12: fork with threads
        children = [ctx.Process(target=_child, args=(model, threads, queue)) for _ in range(n)]
        for c in children:
            c.start()
    deadline = time.monotonic() + CHILD_TIMEOUT
    for c in children:
        c.join(max(0.0, deadline - time.monotonic()))
    hung = [c for c in children if c.is_alive()]
    for c in hung:
        c.kill()
        c.join()
    assert not hung, f"{len(hung)} of {n} forked children hung"
    assert [c.exitcode for c in children] == [0] * n
    return [queue.get(timeout=5) for _ in children]


def test_a_forked_child_runs_after_the_parent_used_two_threads(model, two_threads):
    want = _digest(model)
    assert _core.num_threads() == 2
    for threads, digest in _run_children(model, 2):
        assert threads == 2          # the child's new pool keeps the parent's count
        assert digest == want


def test_a_forked_child_can_change_its_thread_count(model, two_threads):
    want = _digest(model)
    assert _run_children(model, 1, threads=3) == [(2, want)]
    assert _core.num_threads() == 2   # the parent's pool is its own


def test_forks_while_another_thread_runs_parallel_work(model, two_threads):
    """fork() waits for a parallel_for in flight (the pool is locked across
    fork), so the child's copy is never caught half-way."""
    want = _digest(model)
    stop = threading.Event()
    results = []

    def busy():
        while not stop.is_set():
            results.append(_digest(model))

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        children = []
        for _ in range(4):
            time.sleep(0.05)
            children += _run_children(model, 1)
    finally:
        stop.set()
        worker.join()
    assert all(d == want for _, d in children)
    assert results and set(results) == {want}
