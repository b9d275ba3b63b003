"""sparsr: super-resolution networks that skip the work that does not matter,
fast on ordinary CPUs.

    import sparsr
    model = sparsr.load("sparsmsr_3b.pt")
    big = model.upscale(img)     # PIL image or (H, W, 3) uint8 numpy array
"""

from . import _core
from .errors import CheckpointError, ImageError, SparsrError
from .model import Forward, Model, load

__version__ = "0.1.0"

# A bad SPARSR_NUM_THREADS or SPARSR_ISA is a SparsrError at first use (load,
# cpu_info), not at import: the CLI imports sparsr before it can report errors.
from . import env as _env  # noqa: E402

try:
    _env.apply()
except SparsrError:
    pass


def cpu_info() -> dict:
    """The instruction set in use, the best one this CPU has, the thread count
    and the micro-kernels the engine dispatches to."""
    _env.check()
    active = _core.active_isa()
    chosen = {}
    for k in _core.kernels():
        key = f"conv{k['ksize']}x{k['ksize']}-{k['format']}"
        if k["precision"] != "f32":
            key += "-" + k["precision"]
        levels = list(_env.ISA_LEVELS)
        if levels.index(k["isa"]) <= levels.index(active):
            best = chosen.get(key)
            if best is None or levels.index(k["isa"]) > levels.index(best["isa"]):
                chosen[key] = k
    return {"active_isa": active, "detected_isa": _core.detected_isa(),
            "threads": _core.num_threads(),
            "kernels": {key: k["name"] for key, k in sorted(chosen.items())}}


def set_num_threads(n: int) -> None:
    """Sets the number of threads the kernels use (default: SPARSR_NUM_THREADS
    or all cores)."""
    if n < 1:
        raise ValueError("the thread count must be at least 1")
    _core.set_num_threads(int(n))


__all__ = ["load", "Model", "SparsrError", "CheckpointError", "ImageError", "cpu_info",
           "set_num_threads", "__version__"]
