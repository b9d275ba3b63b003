"""The environment variables sparsr reads, checked in one place.

    SPARSR_NUM_THREADS  threads the kernels use (a whole number >= 1)
    SPARSR_ISA          lowers the instruction set: scalar, avx2, avx512, avx512bf16 or
                        amx (below avx512bf16, bf16 layers run f32 kernels)
    SPARSR_MODELS       where `--model NAME` looks (default ~/.cache/sparsr)

The native side reads the first two on its own and ignores a bad thread
count; a typo there would silently run with other settings, so a bad value
is a SparsrError naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SparsrError

ISA_LEVELS = ("scalar", "avx2", "avx512", "avx512bf16", "amx")


def num_threads() -> int | None:
    """SPARSR_NUM_THREADS as a number, or None when unset or empty."""
    raw = os.environ.get("SPARSR_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = None
    if n is None or n < 1:
        raise SparsrError(f"SPARSR_NUM_THREADS={raw!r} is not a thread count: use a whole "
                          "number >= 1, or unset it to use every core")
    return n


def isa() -> str | None:
    """SPARSR_ISA, or None when unset or empty."""
    raw = os.environ.get("SPARSR_ISA", "").strip()
    if not raw:
        return None
    if raw not in ISA_LEVELS:
        raise SparsrError(f"SPARSR_ISA={raw!r} is not an instruction set: use one of "
                          f"{', '.join(ISA_LEVELS)}, or unset it to use the best this CPU has")
    return raw


def models_dir() -> Path:
    """Where named models live: SPARSR_MODELS, else ~/.cache/sparsr."""
    raw = os.environ.get("SPARSR_MODELS", "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "sparsr"


def check() -> None:
    """Raises SparsrError for a bad SPARSR_NUM_THREADS or SPARSR_ISA."""
    num_threads()
    isa()


def apply() -> None:
    """Checks the variables and applies the thread count."""
    check()
    n = num_threads()
    if n is not None:
        from . import _core
        if _core.num_threads() != n:
            _core.set_num_threads(n)
