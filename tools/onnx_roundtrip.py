"""Convert PyTorch weights through ONNX: the test reference network exported by
torch.onnx, then converted by sparsr's ONNX importer.

    python tools/onnx_roundtrip.py ../shared/models/rfdn_aim_x4.pth -o /tmp/rfdn_onnx.pt
    python tools/onnx_roundtrip.py ../shared/models/carn_m.pth -o /tmp/carn_x3.pt --scale 3
    python tools/evaluate.py --model /tmp/rfdn_onnx.pt --data Set5 --data Set14

The architecture and its hyper-parameters are recognised as `sparsr convert`
does; the reference module, its export and the ONNX conversion options are
tests/archs/references.py's, the same as tests/test_onnx_models.py uses. The
result should score exactly what `tools/convert.py MODEL.pth` scores (SMSR: its
dense network, i.e. `tools/evaluate.py --mode dense` on the .pth conversion).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The reference definitions live with the tests (tests/archs is a package there).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from archs.references import export_onnx, onnx_options, reference_module  # noqa: E402

from sparsr.errors import SparsrError  # noqa: E402
from sparsr.importers import convert, pth  # noqa: E402


def roundtrip(src: Path, dst: Path, scale: int | None, onnx_file: Path | None) -> dict:
    """Exports the reference of the weights at src to ONNX and converts that to
    dst; returns the model description written."""
    sd = pth.read_state_dict(src)
    arch, hyper = pth.detect(sd)
    scale = pth.choose_scale(arch, hyper, scale, src)
    options = onnx_options(arch.NAME, sd)
    module = reference_module(arch.NAME, sd, scale)
    with tempfile.TemporaryDirectory() as tmp:
        path = onnx_file or Path(tmp) / f"{src.stem}.onnx"
        export_onnx(module, path, channels=3 if options["color"] == "rgb" else 1)
        return convert(path, dst, scale=scale, **options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="PyTorch weights of a known architecture")
    parser.add_argument("-o", "--output", type=Path, required=True, help="sparsr checkpoint")
    parser.add_argument("--scale", type=int, help="for weights that run at several scales")
    parser.add_argument("--onnx", type=Path, help="also keep the ONNX export here")
    args = parser.parse_args(argv)
    try:
        model = roundtrip(args.model, args.output, args.scale, args.onnx)
    except SparsrError as e:
        print(f"onnx_roundtrip.py: error: {e}", file=sys.stderr)
        return 2
    io = model["io"]
    print(f"{args.model.name} -> ONNX -> {args.output}: x{io['scale']} {io['color']} "
          f"range {io['range']:g}, {len(model['graph']['nodes'])} nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
