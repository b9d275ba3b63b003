"""Convert a super-resolution network into a sparsr checkpoint.

    python tools/convert.py ../shared/models/rfdn_aim_x4.pth -o rfdn_x4.pt
    python tools/convert.py ../shared/models/carn_m.pth -o carn_m_x3.pt --scale 3
    python tools/convert.py model.onnx -o model.pt [--range 255] [--color y]

PyTorch weights: the architecture is recognised from the state_dict's keys and
its hyper-parameters read off tensor shapes; the file is read with
torch.load(weights_only=True), which refuses anything but tensors and plain
containers, so no code from it runs. ONNX: any network whose ops sparsr has.
The same command is `sparsr convert` in the installed package.
"""

from __future__ import annotations

import sys

from sparsr.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
