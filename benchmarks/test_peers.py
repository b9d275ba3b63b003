"""sparsr beside the engines a user would pick instead: OpenVINO (f32 and its
default precision) and ONNX Runtime, on every shared network at 640x360, in
the same session, with the engines interleaved round by round (the machine is
shared and noisy: a slow spell then hits every engine of a round, not one).

One test per network (-k smsr_x2, -k rfdn_x4, ...). The default run is the
SMSR family and the x4 networks; the others (x2 IMDN and CARN-M, FSRCNN,
DnCNN) run when -k names them. Each engine's first run is its warm-up and
gives the outputs compared: sparsr dense against OpenVINO f32 to 0.01 on 0..255.
The optional peers come with `pip install "sparsr[bench]"`.
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pytest

import peers
from conftest import PeerRow

THREADS = 2
MIN_ROUNDS, MAX_ROUNDS = 5, 9
ROUNDS_BUDGET_S = 15.0      # more rounds than the minimum only while they fit in this
MAX_ABS_255 = 0.01
REFERENCE = "OpenVINO f32"  # the outputs are compared with its


def _sparsr_path(request, shared_dir, work_dir, spec):
    from sparsr.importers import convert
    if spec.id == "smsr_x2":
        return request.getfixturevalue("smsr_path")      # the one test_end_to_end times
    path = work_dir / f"{spec.id}.pt"
    if not path.is_file():
        convert(shared_dir / "models" / spec.file, path, scale=spec.scale)
    return path


def _sparsmsr_3b(request):
    """SparSMSR 3b's checkpoint, or None (with the reason in the summary) when it
    cannot be built."""
    try:
        paths = request.getfixturevalue("sparsmsr_paths")
    except pytest.skip.Exception as e:
        return None, f"SparSMSR 3b not timed: {e}"
    if "3b" not in paths:
        return None, "SparSMSR 3b not timed: make_sparsmsr.py did not build it"
    return paths["3b"], None


def _engines(request, model, path, arch, onnx_path, planes, missing):
    """name -> a run of the network on `planes`; OpenVINO's default precision; notes.

    model: `path` loaded in f32. sparsr runs f32, and also bf16 where its
    kernels have it on this CPU (names ending in " bf16"): every layer whose
    kernels have bf16 runs it, the others f32."""
    import sparsr
    x = planes[None]
    runs = {"dense": (path, "dense")}
    notes, default_precision = [], None
    if arch == "smsr":
        runs["SMSR (masks)"] = (path, "mask")
        sparse, why = _sparsmsr_3b(request)
        if sparse is not None:
            runs["SparSMSR 3b"] = (sparse, "mask")
        else:
            notes.append(why)
    loaded = {(path, "f32"): model}
    precisions = ["f32"]
    bf16 = sparsr.load(path, precision="bf16")
    if bf16.info()["bf16_layers"]:
        loaded[(path, "bf16")] = bf16
        precisions.append("bf16")
    else:
        notes.append(f"no bf16 rows: {bf16.info().get('precision_note', 'no layer runs bf16')}")
    engines = {}
    for precision in precisions:
        for run, (p, mode) in runs.items():
            key = (p, precision)
            if key not in loaded:
                loaded[key] = sparsr.load(p, precision=precision)
            name = f"sparsr {run}" + ("" if precision == "f32" else f" {precision}")
            engines[name] = lambda m=loaded[key], mode=mode: m.run_network(planes, mode)
    if "openvino" not in missing:
        ov_f32, _ = peers.openvino_run(onnx_path, x.shape, THREADS, "f32")
        ov_default, default_precision = peers.openvino_run(onnx_path, x.shape, THREADS, None)
        engines["OpenVINO f32"] = lambda: ov_f32(x)
        engines["OpenVINO default"] = lambda: ov_default(x)
    if "onnxruntime" not in missing:
        ort_run = peers.onnxruntime_run(onnx_path, THREADS)
        engines["ONNX Runtime"] = lambda: ort_run(x)
    if missing:
        notes.append(f"{', '.join(missing)} not installed: its columns are empty "
                     '(pip install "sparsr[bench]")')
    return engines, default_precision, notes


@pytest.mark.parametrize("spec", peers.MODELS, ids=[m.id for m in peers.MODELS])
def test_peers(benchmark, results, request, shared_dir, bench_image, work_dir, spec):
    pytest.importorskip("torch", reason="the peers run the PyTorch references' ONNX export")
    missing = peers.missing_engines()
    if len(missing) == 2:
        pytest.skip('neither openvino nor onnxruntime is installed: pip install "sparsr[bench]"')
    import sparsr
    from sparsr.importers import pth

    load_before = os.getloadavg()[0]
    path = _sparsr_path(request, shared_dir, work_dir, spec)
    model = sparsr.load(path, precision="f32")
    sd = pth.read_state_dict(shared_dir / "models" / spec.file)
    arch = pth.detect(sd)[0].NAME
    onnx_path = work_dir / f"{spec.id}.onnx"
    peers.export_onnx(peers.reference_module(arch, sd, spec.scale), onnx_path, model.io.channels)
    planes = peers.network_input(model, bench_image)
    sparsr.set_num_threads(THREADS)
    engines, default_precision, notes = _engines(request, model, path, arch, onnx_path, planes, missing)

    # The warm-up run of each engine gives the outputs compared: those of the
    # dense network (the masked and pruned SMSR runs compute another one); only
    # sparsr's f32 one is held to MAX_ABS_255.
    outputs, warm = {}, {}
    for name, run in engines.items():
        start = time.perf_counter()
        out = np.array(run())
        warm[name] = time.perf_counter() - start
        if name.startswith("sparsr dense") or not name.startswith("sparsr "):
            outputs[name] = out.reshape(out.shape[-3:])      # peers give (1, C, H, W)
    reference = REFERENCE if REFERENCE in outputs else "ONNX Runtime"
    diffs = {name: peers.max_abs_diff_255(out, outputs[reference], model.io.range)
             for name, out in outputs.items() if name != reference}

    rounds = int(np.clip(ROUNDS_BUDGET_S // sum(warm.values()), MIN_ROUNDS, MAX_ROUNDS))
    times = {name: [] for name in engines}
    round_index = itertools.count()
    benchmark.pedantic(lambda: peers.interleaved_round(engines, times, next(round_index)),
                       rounds=rounds, iterations=1, warmup_rounds=0)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    benchmark.extra_info.update(medians=medians, rounds=rounds, max_abs_diff_255=diffs)
    results.peers.append(PeerRow(
        spec.id, spec.scale, rounds, medians, diffs, reference, default_precision,
        (load_before, os.getloadavg()[0]), notes))

    assert diffs["sparsr dense"] <= MAX_ABS_255, (
        f"{spec.id}: sparsr dense differs from {reference} by {diffs['sparsr dense']:.3g} "
        "on 0..255")
