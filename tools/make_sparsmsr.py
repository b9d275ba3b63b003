"""Make the six SparSMSR x2 models of the paper's Table 3 from SMSR weights and Table 1.

    python tools/make_sparsmsr.py --sensitivity artifacts/sensitivity_psnr.json
    python tools/make_sparsmsr.py --base artifacts/smsr_x2.pt --out-dir artifacts --delta 0.04
    python tools/make_sparsmsr.py --block 8 --levels 3 --variants b   # sparsmsr_3b_block8.pt

Writes sparsmsr_{1a,1b,2a,2b,3a,3b}.pt: the 20 core layers sparsified to 6.5 / 24 / 35 %
overall by the sensitivity-based allocation (Eq. 4, tools/allocate.py) at dP = 0.04 dB
(the paper's row). "a" = weight skip + output skip (model input_skip False: the masked
convs multiply the zero sparse inputs at unimportant pixels); "b" = + input skip. The
weights of a and b are identical, and so are their images; only the MACs differ.
--block B prunes whole blocks (B output channels at one input channel and tap, the unit
of the bcsr kernels; tools/allocate.py) to the same per-layer counts, into
sparsmsr_<tag>_block<B>.pt.
The base is the converted official checkpoint (made with tools/convert.py from
<shared>/models/smsr_x2_official.pt when --base does not exist).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from allocate import allocate_by_sensitivity, load_sensitivity, write_sparse_checkpoint  # noqa: E402
from sparsity_common import REPO_ROOT, input_skip, shared_root  # noqa: E402

SPARSMSR_LEVELS = {"1": 0.065, "2": 0.24, "3": 0.35}   # core-layer weight sparsity (Table 3)


def make_models(base: Path, sensitivity: Path, out_dir: Path, delta: float = 0.04,
                block: int = 0, levels: str = "123", variants: str = "ab") -> dict[str, Path]:
    ks, sizes, report = load_sensitivity(sensitivity, delta)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    suffix = f"_block{block}" if block else ""
    for level, target in SPARSMSR_LEVELS.items():
        if level not in levels:
            continue
        allocation = allocate_by_sensitivity(ks, sizes, target)
        for variant, input_skip in (("a", False), ("b", True)):
            if variant not in variants:
                continue
            tag = f"{level}{variant}"
            path = out_dir / f"sparsmsr_{tag}{suffix}.pt"
            write_sparse_checkpoint(base, path, allocation, input_skip=input_skip, block=block,
                                    extra_metadata={
                "method": "sensitivity", "model_name": f"SparSMSR {tag}", "target": target,
                "sensitivity": sensitivity.name, "metric": report["metric"], "delta": delta,
                "calibration": {"set": report["calib"], "images": len(report["calib_images"]),
                                "crop": report["crop"]}})
            written[tag] = path
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="artifacts/smsr_x2.pt", help="converted SMSR x2 checkpoint")
    p.add_argument("--sensitivity", default="artifacts/sensitivity_psnr.json")
    p.add_argument("--delta", type=float, default=0.04)
    p.add_argument("--out-dir", default="artifacts")
    p.add_argument("--block", type=int, default=0,
                   help="prune whole blocks of this many output channels (bcsr); 0: unstructured")
    p.add_argument("--levels", default="123", help="which of the levels 1, 2, 3 to make")
    p.add_argument("--variants", default="ab", help="which of the variants a, b to make")
    args = p.parse_args(argv)
    base = Path(args.base)
    if not base.is_file():
        src = shared_root() / "models" / "smsr_x2_official.pt"
        base.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "convert.py"), str(src),
                        "-o", str(base)], check=True)
    written = make_models(base, Path(args.sensitivity), Path(args.out_dir), args.delta,
                          args.block, args.levels, args.variants)
    import sparsr
    print("| model | core-layer sparsity % | input skip | file |\n|---|---|---|---|")
    for tag, path in written.items():
        m = sparsr.load(path)
        ws = m.metadata["weight_sparsity"]
        print(f"| SparSMSR {tag} | {100 * ws.get('zeros_overall', ws['overall']):.2f} | "
              f"{input_skip(m)} | {path} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
