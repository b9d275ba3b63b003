"""Band execution equals whole-image execution: on every op, on each real
model at small odd sizes down to bands of one row, with values kept across
passes in memory or in temporary files, and through the model's API (a
max_memory budget, tile=)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

import sparsr
from sparsr import _core
from sparsr.errors import ImageError
from sparsr.graph import IO
from sparsr.importers.builder import GraphBuilder
from sparsr.model import Model
from sparsr.ops.smsr import module_shapes

# Max abs difference allowed on 0..255 (global statistics are merged per band).
TOL_255 = 1e-3


def _rand(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


class Net:
    """A tiny graph built op by op from random weights."""

    def __init__(self, seed=0, channels=3):
        self.rng = np.random.default_rng(seed)
        self.sd: dict[str, np.ndarray] = {}
        self.b = GraphBuilder(self.sd, IO(scale=1, color="rgb", range=1.0), "test")
        self.k = 0

    def conv(self, x, cin, cout, k=3, **kw):
        self.k += 1
        p = f"c{self.k}"
        groups = kw.get("groups", 1)
        self.sd[p + ".weight"] = _rand(self.rng, cout, cin // groups, k, k)
        self.sd[p + ".bias"] = _rand(self.rng, cout)
        return self.b.conv(x, p, **kw)

    def conv_t(self, x, cin, cout, k, stride, padding, output_padding=0):
        self.k += 1
        p = f"t{self.k}"
        self.sd[p + ".weight"] = _rand(self.rng, cin, cout, k, k)
        self.sd[p + ".bias"] = _rand(self.rng, cout)
        return self.b.conv_transpose(x, p, stride=stride, padding=padding,
                                     output_padding=output_padding)

    def model(self, out, scale=1, **load):
        self.b.io = IO(scale=scale, color="rgb", range=1.0)
        description, tensors = self.b.finish(out)
        return Model(description, tensors, {}, "<test>", **load)


def _check(model, h, w, rows_list=(1, 2, 3, 5), spill=(False, True), modes=("mask",),
           seed=1, tol=TOL_255 / 255):
    ex = model._executor
    x = np.random.default_rng(seed).random((model.io.channels, h, w), dtype=np.float32) \
        * model.io.range
    f = _core.Feature.from_numpy(x).view()
    for mode in modes:
        whole = ex.run(f, mode)
        want = whole.output.numpy()
        for rows in rows_list:
            for sp in spill:
                got = ex.run_bands(f, mode, rows, spill=sp)
                out = got.output.transpose(2, 0, 1)          # a band run gives (H, W, C)
                assert out.shape == want.shape
                diff = float(np.abs(out - want).max())
                assert diff <= tol * model.io.range, (mode, rows, sp, diff)
                assert len(got.masks) == len(whole.masks)
                for a, b in zip(got.masks, whole.masks):
                    assert a.shape == b.shape and (a == b).all(), (mode, rows, sp)
                assert set(got.layers) == set(whole.layers)


def _chain(net, x, c):
    """A 3x3 conv into c channels, so that every op below sees several."""
    return net.conv(x, 3, c)


OP_GRAPHS = {}


def op_graph(fn):
    OP_GRAPHS[fn.__name__] = fn
    return fn


@op_graph
def conv3x3_chain(net):
    x = _chain(net, net.b.input, 4)
    y = net.b.relu(net.conv(x, 4, 4))
    y = net.b.add(net.conv(y, 4, 4), x)            # fused residual
    return net.conv(net.b.leaky_relu(y, 0.1), 4, 3), 1


@op_graph
def conv3x3_own_residual(net):
    # RFDN's conv(x) + x: the residual is the convolution's own input, whose
    # row beside the band must be computed all the same.
    x = _chain(net, net.b.input, 4)
    y = net.b.leaky_relu(net.b.add(net.conv(x, 4, 4), x), 0.05)
    y = net.b.add(net.conv(y, 4, 4), y)
    return net.conv(y, 4, 3), 1


@op_graph
def conv_general(net):
    x = _chain(net, net.b.input, 4)
    a = net.conv(x, 4, 4, k=5)                      # 5x5, pad 2
    b = net.conv(a, 4, 4, k=3, dilation=2)          # dilated
    c = net.conv(b, 4, 4, k=3, stride=2, padding=1)  # strided, odd heights
    d = net.conv(c, 4, 4, k=1)
    e = net.conv(d, 4, 4, k=3, groups=2)
    return net.conv(net.b.resize(e, "nearest", scale=2.0), 4, 3), 1


@op_graph
def conv_no_padding(net):
    x = _chain(net, net.b.input, 4)
    y = net.conv(x, 4, 4, k=3, padding=0)
    y = net.conv(y, 4, 4, k=3, padding=2)
    return net.conv(y, 4, 3, k=1), 1


@op_graph
def transposed(net):
    x = _chain(net, net.b.input, 4)
    y = net.conv_t(x, 4, 4, 3, 2, 1, 1)              # SMSR's mask upsampling
    y = net.conv_t(y, 4, 4, 4, 2, 1)
    y = net.b.avg_pool(y, 4, 4)
    return net.conv(y, 4, 3), 1


@op_graph
def pooling(net):
    x = _chain(net, net.b.input, 4)
    a = net.b.max_pool(x, 3, 1, 1)
    b = net.b.avg_pool(a, 2)
    b = net.b.max_pool(b, 7, 3)                     # RFDN's ESA
    return net.conv(net.b.resize(b, "bilinear", like=x), 4, 3), 1


@op_graph
def resizes(net):
    x = _chain(net, net.b.input, 4)
    a = net.b.resize(x, "bicubic", scale=2.0)
    b = net.b.resize(a, "bilinear", scale=3.0)
    c = net.b.avg_pool(b, 6)
    return net.conv(net.b.add(net.b.resize(c, "nearest", scale=2.0),
                              net.b.resize(x, "bilinear", scale=2.0)), 4, 3), 2


@op_graph
def resize_to_size(net):
    # An ESA-like branch: pooled small, resized back to the size of a value
    # it reads only for its shape (which band execution need not store).
    x = _chain(net, net.b.input, 4)
    s = net.b.max_pool(net.conv(x, 4, 4, stride=2, padding=0), 3, 3)
    up = net.b.resize(s, "bilinear", like=x)
    return net.conv(net.b.mul(x, net.b.sigmoid(up)), 4, 3), 1


@op_graph
def shuffles(net):
    x = _chain(net, net.b.input, 4)
    a = net.b.pixel_unshuffle(net.b.pixel_shuffle(net.conv(x, 4, 16, k=1), 2), 2)
    return net.conv(net.b.pixel_shuffle(a, 2), 4, 3), 2


@op_graph
def channels(net):
    x = _chain(net, net.b.input, 6)
    a, b = net.b.split(x, [2, 4])
    c = net.b.slice(b, 1, 3)
    d = net.b.concat([net.b.sigmoid(a), net.b.tanh(c), net.b.silu(b)])
    e = net.conv(d, 8, 4, k=1)
    parts = [net.conv(e, 4, 2, k=1) for _ in range(3)]
    f = net.b.relu(net.conv(net.b.concat(parts), 6, 4, k=1))    # partial convs
    return net.conv(net.b.mul(f, net.b.sub(f, e)), 4, 3), 1


@op_graph
def global_stats(net):
    x = _chain(net, net.b.input, 4)
    m = net.b.global_mean(x)
    s = net.b.global_std(net.b.relu(x))
    att = net.b.sigmoid(net.conv(net.b.add(m, s), 4, 4, k=1))
    y = net.b.add(net.b.mul(net.conv(x, 4, 4), att), x)         # scale + residual
    z = net.b.mul(y, net.b.global_mean(y))
    w = net.b.mul(net.b.input, net.b.global_std(net.b.input))
    return net.b.add(net.conv(z, 4, 3), w), 1


@op_graph
def smsr_module(net):
    c, n_layers = 16, 4
    x = _chain(net, net.b.input, c)
    params = {}
    rng = net.rng
    for role, shape in module_shapes(c, n_layers).items():
        if role.startswith("ca."):
            continue
        net.sd[f"m.{role}"] = _rand(rng, *shape)
        params[role] = net.b.param(f"m.{role}")
    # Half the channels dense per layer, and masks with both kinds of pixels.
    net.sd["m.body.ch_mask"] = np.where(rng.random((1, c, n_layers, 2)) < 0.5, 3.0, -3.0
                                        ).astype(np.float32)
    y = net.b.op("smsr_module", [x], {"n_layers": n_layers, "attention": False}, params, "m")
    return net.conv(net.b.add(y, x), c, 3), 1


@pytest.mark.parametrize("name", sorted(OP_GRAPHS))
@pytest.mark.parametrize("size", [(29, 23), (17, 30), (15, 41)])
def test_every_op_in_bands_equals_whole(name, size):
    net = Net(seed=sorted(OP_GRAPHS).index(name))
    out, scale = OP_GRAPHS[name](net)
    model = net.model(out, scale=scale)
    _check(model, *size, modes=("mask", "dense") if name == "smsr_module" else ("mask",))


def test_smsr_module_masks_have_both_kinds_of_pixels():
    net = Net(seed=5)
    out, _ = OP_GRAPHS["smsr_module"](net)
    model = net.model(out)
    x = _core.Feature.from_numpy(np.random.default_rng(2).random((3, 20, 20),
                                                                 dtype=np.float32)).view()
    mask = model._executor.run(x, "mask").masks[0]
    assert 0 < mask.mean() < 1


MODELS = {
    "smsr_x2_official.pt": None, "carn_m.pth": 4, "imdn_x2.pth": None, "imdn_x4.pth": None,
    "rfdn_aim_x4.pth": None, "rlfn_ntire2022_x4.pth": None, "span_ch28_x4.pth": None,
    "realesr_animevideov3_x4.pth": None, "fsrcnn_x2_y.pth": None, "dncnn_25_gray.pth": None,
}


@pytest.fixture(scope="module")
def converted(shared_dir, tmp_path_factory):
    from sparsr.importers import convert

    out = tmp_path_factory.mktemp("bands")
    cache = {}

    def get(name):
        if name not in cache:
            path = out / (name.split(".")[0] + ".pt")
            convert(shared_dir / "models" / name, path, scale=MODELS[name])
            cache[name] = sparsr.load(path)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_models_in_bands_equal_whole(converted, name):
    model = converted(name)
    rows = (1, 4) if name.startswith(("smsr", "imdn", "rfdn")) else (1, 3, 8)
    _check(model, 21, 17, rows_list=rows, spill=(False,), modes=("mask", "dense")
           if name.startswith("smsr") else ("mask",))
    _check(model, 26, 15, rows_list=(7,), spill=(True,))
    if name.startswith("rfdn"):
        # Sizes at which the ESA's low-resolution maps have several rows.
        _check(model, 40, 33, rows_list=(7,), spill=(False,))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_memory_estimates_match_the_features_alive(converted, name):
    """The whole-image plan's peak, and what bandcost counts a band run to
    hold (the input and output beside), against the native high-water mark
    of feature bytes alive."""
    from sparsr.bandcost import band_bytes
    from sparsr.executor import feature_bytes

    model = converted(name)
    ex = model._executor
    h, w = 90, 64
    x = np.random.default_rng(0).random((model.io.channels, h, w), dtype=np.float32)
    f = _core.Feature.from_numpy(x * model.io.range).view()
    _core.reset_peak_feature_bytes()
    base = _core.live_feature_bytes() - feature_bytes(model.io.channels, h, w)  # the input's
    ex.run(f, "mask")
    got, want = _core.reset_peak_feature_bytes() - base, ex.plan(h, w).peak_bytes
    assert 0.9 * want <= got <= 1.05 * want, ("whole", got / want)
    for rows in (1, 8, 30):
        bp = ex.band_plan(h, w, rows)
        for spill in (False, True):
            want = bp.output_bytes() + (0 if spill else bp.store_bytes()) + band_bytes(bp, spill)
            _core.reset_peak_feature_bytes()
            base = _core.live_feature_bytes()
            out = ex.run_bands(f, "mask", rows, spill=spill).output
            got = _core.reset_peak_feature_bytes() - base + out.nbytes   # the output is numpy
            assert 0.85 * want <= got <= 1.08 * want, (rows, spill, got / want)


def test_a_value_read_for_its_shape_alone_is_not_read_whole(monkeypatch):
    from sparsr import bands

    net = Net(5)
    model = net.model(*resize_to_size(net))
    bp = model._executor.band_plan(30, 27, 4)
    resize = next(s for s in bp.steps if s.kind == "whole"
                  and getattr(s.op, "node", None) is not None and s.op.node.op == "resize")
    assert resize.op.shape_inputs() == (1,)
    read = []
    whole = bands._whole
    monkeypatch.setattr(bands, "_whole", lambda bplan, v, *a: read.append(v) or whole(bplan, v, *a))
    _check(model, 30, 27, rows_list=(1, 4), spill=(False, True))
    assert resize.inputs[0] in read and resize.inputs[1] not in read


def test_esa_upsampling_at_1920_wide_reads_no_row_past_its_end(converted):
    # RLFN's ESA resizes (16, 23, 318) to (16, 150, 1920): the AVX-512 vertical
    # pass's last vector loaded whole rows past the end of the source buffer
    # (a segfault when the buffer ended at its mapping's edge).
    model = converted("rlfn_ntire2022_x4.pth")
    rgb = np.random.default_rng(0).random((150, 1920, 3), dtype=np.float32)
    out = model.process(rgb)
    assert out.shape == (600, 7680, 3) and np.isfinite(out).all()


def test_upscale_in_bands_gives_the_same_image(converted, shared_dir):
    from PIL import Image

    model = converted("smsr_x2_official.pt")
    lr = sorted((shared_dir / "data" / "Set5" / "LR_bicubic" / "X2").iterdir())[0]
    img = np.asarray(Image.open(lr).convert("RGB"))[:60, :50]
    whole = model.upscale(img)
    for tile in (1, 9, 32):
        banded = model.upscale(img, tile=tile)
        diff = np.abs(banded.astype(int) - whole)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, tile


def test_a_small_budget_runs_in_bands_and_a_tiny_one_is_refused(converted):
    model = converted("rlfn_ntire2022_x4.pth")
    # (Tall enough that bands beat the whole image's memory: at 64x48 the
    # ESA windows of even one-row bands reach most of the image.)
    ex = model.execution(200, 48)
    assert ex.band_rows is None
    small = sparsr.load(model.path, max_memory=model.execution(200, 48).peak_bytes // 2)
    ex = small.execution(200, 48)
    assert ex.band_rows is not None and ex.band_rows < 200
    rgb = np.random.default_rng(0).random((200, 48, 3), dtype=np.float32)
    assert np.abs(small.process(rgb) - model.process(rgb)).max() < 1e-5
    tiny = sparsr.load(model.path, max_memory=1 << 16)
    with pytest.raises(ImageError, match="even in bands"):
        tiny.process(rgb)


def test_spilled_values_leave_no_file_on_success_or_error(converted, monkeypatch, tmp_path):
    model = converted("imdn_x2.pth")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def open_files():
        fds = os.listdir("/proc/self/fd")
        links = []
        for fd in fds:
            try:
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return [link for link in links if link.startswith(str(tmp_path))]

    x = _core.Feature.from_numpy(np.random.default_rng(0).random((3, 20, 20),
                                                                 dtype=np.float32)).view()
    bp = model._executor.band_plan(20, 20, 4)
    assert len(bp.stored) > 1           # values kept across the attention passes
    model._executor.run_bands(x, "mask", 4, spill=True)
    assert os.listdir(tmp_path) == [] and open_files() == []
    from sparsr import bands

    calls = []
    real = bands.Store.write

    def failing(self, rows, r0):
        calls.append(self.spill)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real(self, rows, r0)

    monkeypatch.setattr(bands.Store, "write", failing)
    with pytest.raises(OSError, match="No space"):
        model._executor.run_bands(x, "mask", 4, spill=True)
    assert True in calls and os.listdir(tmp_path) == [] and open_files() == []


def test_tile_must_be_a_positive_row_count(converted):
    model = converted("fsrcnn_x2_y.pth")
    rgb = np.zeros((8, 8, 3), np.float32)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="tile"):
            model.process(rgb, tile=bad)


def test_cli_tile_and_max_memory_give_the_same_image(converted, tmp_path):
    from PIL import Image

    from sparsr import cli

    model = converted("realesr_animevideov3_x4.pth")
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (200, 31, 3), np.uint8)).save(src)
    outs = {}
    # Between what bands of one row need and the whole-image peak.
    budget = (model.execution(200, 31).peak_bytes
              + model.execution(200, 31, tile=1).peak_bytes) // 2
    for name, extra in {"whole": [], "tile": ["--tile", "4"],
                        "budget": ["--max-memory", f"{budget >> 10}K"]}.items():
        out = tmp_path / f"{name}.png"
        assert cli.main(["upscale", str(src), "-m", model.path, "-o", str(out), "-q"]
                        + extra) == 0
        outs[name] = np.asarray(Image.open(out)).astype(int)
    assert model.execution(200, 31).band_rows is None
    assert sparsr.load(model.path, max_memory=budget).execution(200, 31).band_rows < 200
    for name in ("tile", "budget"):
        diff = np.abs(outs[name] - outs["whole"])
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, name
    with pytest.raises(SystemExit) as e:
        cli.main(["upscale", str(src), "-m", model.path, "-o", str(tmp_path / "x.png"),
                  "--max-memory", "lots"])
    assert e.value.code == 2


def test_progress_is_reported_band_by_band(converted):
    model = converted("rlfn_ntire2022_x4.pth")
    img = np.random.default_rng(4).integers(0, 256, (30, 20, 3), np.uint8)
    calls = []
    out = model.upscale(img, tile=7, progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (120, 80, 3)
    total = 30 * 20
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    bands = model._executor.band_plan(30, 20, 7)
    n = sum(len(p.bands) for p in bands.passes)
    assert n >= 5 and len(calls) >= n + 1
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) >= n


def test_a_tiny_budget_spills_the_values_kept_across_passes(converted):
    model = converted("imdn_x4.pth")
    rgb = np.random.default_rng(5).random((40, 36, 3), dtype=np.float32)
    whole = model.process(rgb)
    bp = model._executor.band_plan(40, 36, 8)
    # Under the whole-image peak, and under 3x the values kept across passes.
    budget = int(min(0.8 * model.execution(40, 36).peak_bytes, 2.5 * bp.store_bytes()))
    small = sparsr.load(model.path, max_memory=budget)
    ex = small.execution(40, 36)
    # The passes run in bands (here one band may be the whole height: the
    # work beside the stored values fits) with the stored values in files.
    assert ex.band_rows is not None and ex.spill
    assert np.abs(small.process(rgb) - whole).max() <= TOL_255 / 255
    ex = small.execution(40, 36, tile=8)
    assert ex.band_rows == 8 and ex.spill
    assert np.abs(small.process(rgb, tile=8) - whole).max() <= TOL_255 / 255



def test_a_feature_file_gives_back_rows_with_the_rows_beside_as_borders(tmp_path):
    data = np.random.default_rng(3).random((3, 11, 21), dtype=np.float32) + 1.0
    with open(tmp_path / "f", "w+b") as file:
        file.truncate(_core.feature_file_bytes(3, 11, 21))
        src = _core.Feature.from_numpy(data).view()
        _core.write_feature_rows(file.fileno(), src.rows(0, 4), 11, 0)
        _core.write_feature_rows(file.fileno(), src.rows(4, 11), 11, 4)
        np.testing.assert_array_equal(_core.read_feature_rows(file.fileno(), 3, 11, 21, 0, 11)
                                      .numpy(), data)
        # A 3x3 over rows [3, 7) read back reads rows 2 and 7 as its padding,
        # as over a view of those rows in memory; at the ends, zeros.
        w = np.random.default_rng(4).standard_normal((5, 3, 3, 3)).astype(np.float32)
        conv = _core.Conv2d(w, np.zeros(5, np.float32))
        for r0, r1 in ((3, 7), (0, 2), (9, 11), (0, 11)):
            got = _core.Feature(5, r1 - r0, 21)
            conv(_core.read_feature_rows(file.fileno(), 3, 11, 21, r0, r1), got.view(),
                 _core.PixelSet.full(r1 - r0, 21))
            want = _core.Feature(5, r1 - r0, 21)
            conv(src.rows(r0, r1), want.view(), _core.PixelSet.full(r1 - r0, 21))
            np.testing.assert_array_equal(got.numpy(), want.numpy())
        with pytest.raises(IndexError, match="rows"):
            _core.read_feature_rows(file.fileno(), 3, 11, 21, 5, 12)
        with pytest.raises(IndexError, match="rows"):
            _core.write_feature_rows(file.fileno(), src.rows(4, 11), 11, 5)


def test_a_full_disk_or_a_short_feature_file_is_an_os_error(tmp_path):
    src = _core.Feature.from_numpy(np.ones((2, 4, 4), np.float32)).view()
    with open("/dev/full", "wb") as full:
        with pytest.raises(OSError) as err:
            _core.write_feature_rows(full.fileno(), src, 4, 0)
    assert err.value.errno == 28 and "writing a feature file" in str(err.value)
    with open(tmp_path / "short", "w+b") as file:          # not truncated to its size
        with pytest.raises(OSError, match="reading a feature file"):
            _core.read_feature_rows(file.fileno(), 2, 4, 4, 0, 4)


def test_output_rows_are_interleaved_into_the_image_array_in_place():
    rng = np.random.default_rng(4)
    x = rng.random((3, 11, 13), dtype=np.float32)
    rows = _core.Feature.from_numpy(x).view().rows(4, 9)
    out = np.full((20, 13, 3), -1, np.float32)
    _core.copy_to_hwc(rows, out[2:7])
    assert np.array_equal(out[2:7], x[:, 4:9].transpose(1, 2, 0))
    assert (out[:2] == -1).all() and (out[7:] == -1).all()
    for bad in (np.zeros((5, 13, 3)), np.zeros((5, 13, 4), np.float32),
                np.zeros((3, 5, 13), np.float32).transpose(1, 2, 0)):
        with pytest.raises(ValueError, match="copy_to_hwc"):
            _core.copy_to_hwc(rows, bad)


def test_stores_of_a_pass_take_the_features_of_the_stores_closed_before_it(converted,
                                                                            monkeypatch):
    from sparsr import bands

    model = converted("smsr_x2_official.pt")
    # (Stores taken over row by row, test below, aside.)
    monkeypatch.setattr(bands.BandPlan, "_shares", lambda self: {})
    features = []
    init = bands.Store.__init__

    def record(self, *a, **k):
        init(self, *a, **k)
        if self.feature is not None:
            features.append(self.feature)       # kept alive: ids stay distinct
    monkeypatch.setattr(bands.Store, "__init__", record)
    x = np.random.default_rng(2).random((3, 40, 36), dtype=np.float32) * 255
    f = _core.Feature.from_numpy(x).view()
    want = model._executor.run(f, "mask").output.numpy()
    got = model._executor.run_bands(f, "mask", 8).output.transpose(2, 0, 1)
    assert np.abs(got - want).max() <= TOL_255
    # SMSR's five channel attentions: six passes, each storing module outputs
    # of one shape, in the features of the last pass's.
    assert len(features) > len({id(f) for f in features}) + 5


def test_the_pool_then_the_band_arena_get_what_the_budget_leaves_up_to_a_band(converted):
    from sparsr.bandcost import band_bytes
    from sparsr.executor import BAND_POOL

    model = converted("realesr_animevideov3_x4.pth")
    band = band_bytes(model._executor.band_plan(200, 31, 8), False)
    roomy = sparsr.load(model.path, max_memory=1 << 30).execution(200, 31, tile=8)
    assert (roomy.band_rows, roomy.spill, roomy.pool_bytes) == (8, False, band)
    assert roomy.arena_bytes == 2 * band
    assert roomy.peak_bytes <= 1 << 30
    fixed = roomy.peak_bytes - 2 * band     # input, output, stores and the band's buffers
    # Room for the pool and half a band more: the arena gets the half.
    mid = sparsr.load(model.path, max_memory=fixed + band + band // 2).execution(200, 31, tile=8)
    assert (mid.pool_bytes, mid.arena_bytes) == (band, band + band // 2)
    assert mid.peak_bytes == fixed + band + band // 2
    # A budget that leaves less: the pool gets BAND_POOL (or a band) at least,
    # the arena the band's buffers.
    least = min(band, BAND_POOL)
    tight = sparsr.load(model.path, max_memory=fixed + least // 2).execution(200, 31, tile=8)
    assert (tight.pool_bytes, tight.arena_bytes) == (least, band)


def _two_passes(net, pointwise: bool):
    """u (pass 0) read once more in pass 1 by the step making w, which is
    stored for pass 2: pointwise (w may overwrite u's rows as it goes) or
    by a 3x3 (its next band reads u's rows above the ones w wrote)."""
    u = _chain(net, net.b.input, 4)
    a = net.b.global_mean(u)
    w = net.b.mul(u, a)
    if not pointwise:
        w = net.b.add(net.conv(u, 4, 4), w)      # a 3x3 over u, its residual fused
    z = net.b.mul(w, net.b.global_mean(w))
    return net.conv(net.b.add(z, w), 4, 3), 1, u, w


@pytest.mark.parametrize("pointwise", [True, False])
def test_a_store_is_taken_over_only_where_no_later_read_reaches_it(pointwise):
    net = Net(7)
    out, scale, u, _ = _two_passes(net, pointwise)
    model = net.model(out, scale)
    bp = model._executor.band_plan(30, 21, 4)
    made = [v for i in bp.band_steps(1) for v in bp.steps[i].outputs if v in bp.stored]
    assert u in bp.stored and bp.last_pass[u] == 1 and len(made) == 1
    w = made[0]
    assert (bp.shares.get(w) == u) == pointwise, bp.shares
    whole_store = sum(sparsr.executor.feature_bytes(*bp.shapes[v]) for v in (u, w))
    assert (bp.store_bytes() < whole_store) == pointwise
    _check(model, 30, 21, rows_list=(1, 4), spill=(False, True))


def test_bands_take_their_buffers_from_the_band_arena():
    # Features of a dozen sizes, bands of unequal heights (the first and last
    # are shorter): from the arena, the bands after the second map nothing new
    # and all of them map less than from the pool; the arena is let go when
    # the run ends.
    net = Net(seed=3)
    x = _chain(net, net.b.input, 24)
    y = net.b.relu(net.conv(x, 24, 40))
    z = net.b.relu(net.conv(y, 40, 32))
    out = net.conv(net.b.add(net.conv(z, 32, 24), x), 24, 3)
    model = net.model(out)
    ex = model._executor
    f = _core.Feature.from_numpy(
        np.random.default_rng(0).random((3, 203, 320), dtype=np.float32)).view()
    want = ex.run(f, "mask").output.numpy().transpose(1, 2, 0)

    def run(arena_bytes):
        _core.release_buffers()
        start, mapped, arena = _core.mapped_bytes(), [], []

        def progress(fraction):
            mapped.append(_core.mapped_bytes() - start)
            arena.append(_core.band_arena_bytes())

        got = ex.run_bands(f, "mask", 37, arena_bytes=arena_bytes, progress=progress).output
        assert np.abs(got - want).max() <= TOL_255 / 255
        assert _core.band_arena_bytes() == 0
        return mapped, arena

    pooled, _ = run(0)
    mapped, arena = run(64 << 20)
    assert len(mapped) == 6 and min(arena) >= 64 << 20
    assert mapped[2:] == [mapped[1]] * 4
    assert mapped[-1] < pooled[-1]
    _core.release_buffers()
