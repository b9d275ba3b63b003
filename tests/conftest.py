"""Shared fixtures. Tests that need ../shared (weights, images) or torch skip
with a reason only when those are absent; CI always has both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("SPARSR_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    root = shared_root()
    if not (root / "models" / "smsr_x2_official.pt").is_file():
        pytest.skip(f"shared data not found at {root} (set SPARSR_SHARED)")
    return root


@pytest.fixture(scope="session")
def smsr_checkpoint(shared_dir, tmp_path_factory) -> Path:
    """The official SMSR x2 weights converted by tools/convert.py."""
    pytest.importorskip("torch", reason="converting PyTorch weights needs torch")
    out = tmp_path_factory.mktemp("models") / "smsr_x2.pt"
    subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"),
                    str(shared_dir / "models" / "smsr_x2_official.pt"), "-o", str(out)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def smsr_model(smsr_checkpoint):
    import sparsr
    return sparsr.load(smsr_checkpoint)


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def dataset_pairs(root: Path, name: str, scale: int):
    """(name, lr, hr) uint8 RGB triples of a dataset in the EDSR layout."""
    base = root / "data" / name
    for hr_path in sorted((base / "HR").glob("*.png")):
        lr_path = base / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
        yield hr_path.stem, read_rgb(lr_path), read_rgb(hr_path)


def smsr_modules(model) -> list:
    """The SMSR module objects of a loaded model, in graph order (for white-box tests)."""
    return [op.module for op in model._executor.ops if op.name == "smsr_module"]


def with_input_skip(description: dict, flag: bool) -> dict:
    """A copy of a model description whose SMSR modules have input skip on or off."""
    import copy
    d = copy.deepcopy(description)
    for node in d["graph"]["nodes"]:
        if node["op"] == "smsr_module":
            node.setdefault("attrs", {})["input_skip"] = flag
    return d


def input_skip_of(model) -> bool:
    return all(n.attrs.get("input_skip", True) for n in model.graph.nodes
               if n.op == "smsr_module")
