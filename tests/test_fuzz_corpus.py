"""Every input the fuzzer (tests/fuzz) ever found misbehaving, run again: each
must now be refused with sparsr's own error (or run), without any other
exception or warning, within the fuzzer's time limit."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from fuzz import engine, targets

CORPUS = Path(__file__).resolve().parent / "fuzz" / "corpus"
FILES = sorted(p for p in CORPUS.glob("*/*") if p.suffix in (".pt", ".onnx", ".pth"))
NEEDS = {"onnx": "onnx", "pth": "torch"}


def test_the_corpus_is_there():
    assert len(FILES) >= 100
    assert {p.parent.name for p in FILES} == set(targets.TARGETS)


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def warm():
    """Imports done once, so that each input's time is its own."""
    engine.preload([t for t in targets.TARGETS if t not in NEEDS or _has(NEEDS[t])])


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_input(path, tmp_path, warm):
    target = engine.target_of(path)
    if target in NEEDS:
        pytest.importorskip(NEEDS[target])
    named = tmp_path / targets.FILE_NAMES[target]
    shutil.copyfile(path, named)
    start = time.process_time()
    try:
        outcome = targets.run(target, named, tmp_path)
    except targets.Finding as e:
        raise AssertionError(f"{path.name}: {e}") from e.__cause__
    assert outcome in ("ok", "refused")
    assert time.process_time() - start < 2.0


def test_the_hostile_pickles_run_code_when_unpickled_but_not_when_converted(tmp_path, warm):
    """The fuzzer's code-running pickles are real: a plain pickle.loads runs
    them (the canary is set); converting them as .pth refuses them unrun."""
    import os
    import pickle
    import random

    from fuzz import mutators

    if not _has("torch"):
        pytest.skip("converting .pth needs torch")
    for kind in range(6):
        rng = random.Random(kind)
        while True:        # the seed whose first draw is this kind
            state = rng.getstate()
            if rng.randrange(6) == kind:
                rng.setstate(state)
                break
        data = mutators.hostile_pickle(rng)
        os.environ.pop(mutators.CANARY_ENV, None)
        pickle.loads(data)
        assert os.environ.pop(mutators.CANARY_ENV) == "1"
        path = tmp_path / targets.FILE_NAMES["pth"]
        path.write_bytes(data)
        assert targets.run("pth", path, tmp_path) == "refused"
