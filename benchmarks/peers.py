"""The engines a user could pick instead of sparsr, on the same networks.

Each network is its PyTorch reference (tests/archs/references.py) with the
authors' weights, exported by torch.onnx (opset 17, dynamic H and W, the legacy
exporter) and run by OpenVINO (f32 via INFERENCE_PRECISION_HINT, and its
default precision, bf16 on CPUs with AVX512_BF16) and by ONNX Runtime's CPU
execution provider, each on as many threads as sparsr. sparsr runs its own
conversion of the same .pth file. SMSR's peers run its dense network (every
spatial mask one): its masked forward thresholds features, which a dense engine
computes in full anyway.

All engines run the network alone on the same float32 planes, prepared once
from the image as sparsr's Model prepares them (sparsr through
Model.run_network), and give their output planes on the network's own range.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# BT.601 Y as the Y-channel networks were trained on (sparsr.model's _Y).
_Y = np.array([64.738, 129.057, 25.064]) / 256.0
_GREY = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class PeerModel:
    id: str             # the test id: select with -k
    file: str           # in <shared>/models
    scale: int
    default: bool       # in the default run; the others run when named with -k


MODELS = [
    PeerModel("smsr_x2", "smsr_x2_official.pt", 2, True),
    PeerModel("carn_m_x4", "carn_m.pth", 4, True),
    PeerModel("imdn_x4", "imdn_x4.pth", 4, True),
    PeerModel("rfdn_x4", "rfdn_aim_x4.pth", 4, True),
    PeerModel("rlfn_x4", "rlfn_ntire2022_x4.pth", 4, True),
    PeerModel("span_x4", "span_ch28_x4.pth", 4, True),
    PeerModel("realesr_animevideov3_x4", "realesr_animevideov3_x4.pth", 4, True),
    PeerModel("carn_m_x2", "carn_m.pth", 2, False),
    PeerModel("imdn_x2", "imdn_x2.pth", 2, False),
    PeerModel("fsrcnn_x2_y", "fsrcnn_x2_y.pth", 2, False),
    PeerModel("dncnn_25_grey", "dncnn_25_gray.pth", 1, False),
]


def missing_engines() -> list[str]:
    return [name for name in ("openvino", "onnxruntime")
            if importlib.util.find_spec(name) is None]


# -- the networks ---------------------------------------------------------------------

def _tests_on_path() -> None:
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.append(tests)      # after benchmarks/: its conftest stays `conftest`


def smsr_dense_module(state_dict):
    """SMSR x2 with every spatial mask one. Then each sparse mask conv is a plain
    3x3 conv (its dense and sparse channel parts add up to the whole weight), so
    this is the network as a dense engine runs it: one conv per layer, not the
    two masked ones tests/smsr_reference.py writes out."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    _tests_on_path()
    import smsr_reference as ref

    class SMSRDense(nn.Module):
        def __init__(self, sd):
            super().__init__()
            self.sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}

        def forward(self, x):
            sd = self.sd

            def conv(name, y, padding=1):
                return F.conv2d(y, sd[name + ".weight"], sd.get(name + ".bias"), padding=padding)

            x0 = conv("sub_mean", x, 0)
            h = conv("head.2", F.relu(conv("head.0", x0)))
            features, outs = h, []
            for k in range(ref.NUM_SMM):
                p = f"body.{k}."
                y, layers = features, []
                for i in range(ref.NUM_LAYERS):
                    y = F.relu(conv(f"{p}body.body.{i}", y))
                    layers.append(y)
                y = conv(p + "body.collect", torch.cat(layers, 1), 0)
                features = ref.channel_attention(sd, p + "ca.", y) + features
                outs.append(features)
            y = conv("collect.2", F.relu(conv("collect.0", torch.cat(outs, 1), 0))) + h
            y = F.pixel_shuffle(conv("tail.0", y), ref.SCALE)
            y = y + F.interpolate(x0, scale_factor=ref.SCALE, mode="bicubic",
                                  align_corners=False)
            return conv("add_mean", y, 0)

    return SMSRDense(state_dict).eval()


def reference_module(arch: str, state_dict, scale: int):
    """The PyTorch network a peer runs: tests/archs/references.py's reference,
    except for SMSR (see smsr_dense_module)."""
    if arch == "smsr":
        return smsr_dense_module(state_dict)
    _tests_on_path()
    from archs.references import reference_module as reference
    return reference(arch, state_dict, scale)


def export_onnx(module, path: Path, channels: int) -> None:
    _tests_on_path()
    from archs.references import export_onnx as export
    export(module, path, channels)


# -- inputs and outputs as the network sees them ---------------------------------------

def network_input(model, image: np.ndarray) -> np.ndarray:
    """(C, H, W) float32: the planes sparsr's Model feeds its graph for a uint8
    RGB image (colour conversion, then the model's pixel range)."""
    io = model.io
    rgb = image.astype(np.float32)
    if io.color == "rgb":
        planes = (rgb[:, :, ::-1] if io.channel_order == "bgr" else rgb).transpose(2, 0, 1)
    elif io.color == "y":
        planes = np.tensordot(_Y, rgb, axes=([0], [2]))[None] + 16.0
    else:
        planes = np.tensordot(_GREY, rgb, axes=([0], [2]))[None]
    return np.ascontiguousarray(planes * (io.range / 255.0), dtype=np.float32)


def max_abs_diff_255(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """The largest difference of two outputs on the network's range, on 0..255."""
    if a.shape != b.shape:
        raise AssertionError(f"outputs differ in shape: {a.shape} vs {b.shape}")
    return float(np.abs(a.astype(np.float64) - b).max()) * 255.0 / data_range


# -- the peer engines ------------------------------------------------------------------

def openvino_run(onnx_path: Path, shape: tuple, threads: int,
                 precision: str | None) -> tuple[Callable, str]:
    """(run(x) -> output, the inference precision OpenVINO chose). The model is
    reshaped to the benchmark's static input shape, OpenVINO's best case for a
    fixed frame size; precision None keeps OpenVINO's default."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({model.input(0): ov.PartialShape(list(shape))})
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def run(x):
        request.infer({0: x}, share_inputs=True, share_outputs=True)
        return request.get_output_tensor(0).data

    return run, chosen


def onnxruntime_run(onnx_path: Path, threads: int) -> Callable:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


# -- interleaved timing ------------------------------------------------------------------

def interleaved_round(engines: dict[str, Callable[[], object]], times: dict[str, list],
                      round_index: int) -> None:
    """Runs every engine once, in an order rotated by the round index (so no
    engine always follows the same one on a shared, noisy machine), appending
    each one's wall time."""
    names = list(engines)
    k = round_index % len(names)
    for name in names[k:] + names[:k]:
        start = time.perf_counter()
        engines[name]()
        times[name].append(time.perf_counter() - start)
