"""The graph runtime on tiny graphs: structural refusals, shape inference at
load time, fusion, buffer lifetimes, in-place ops, split 1x1 convs over
concats, and restarts from kept values -- each against a float64 numpy run of
the same graph."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparsr
from sparsr import checkpoint
from sparsr.errors import CheckpointError, ImageError
from sparsr.graph import IO
from sparsr.importers.builder import GraphBuilder


def conv_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int) -> np.ndarray:
    """float64 'same' convolution, stride 1: x (C, H, W), w (O, C, k, k)."""
    c, h, wd = x.shape
    k = w.shape[2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((w.shape[0], h + 2 * pad - k + 1, wd + 2 * pad - k + 1))
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, dy:dy + out.shape[1], dx:dx + out.shape[2]]
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx].astype(np.float64), patch)
    if b is not None:
        out += b[:, None, None]
    return out


def _weights(rng, cout, cin, k, scale=0.2):
    return {"weight": (rng.standard_normal((cout, cin, k, k)) * scale).astype(np.float32),
            "bias": (rng.standard_normal(cout) * 0.1).astype(np.float32)}


def _sd(rng, layers: dict[str, tuple]) -> dict:
    sd = {}
    for name, (cout, cin, k) in layers.items():
        for role, v in _weights(rng, cout, cin, k).items():
            sd[f"{name}.{role}"] = v
    return sd


def _save(tmp_path, model, tensors, name="g.pt"):
    path = tmp_path / name
    checkpoint.save(path, model, tensors)
    return path


def _run(model, img: np.ndarray) -> np.ndarray:
    """The graph output for an RGB uint8 image, as (C, H, W) on the network's range."""
    out = model.forward(img).output           # (H, W, 3) on 0..255
    return out.transpose(2, 0, 1) * (model.io.range / 255.0)


@pytest.fixture
def rng():
    return np.random.default_rng(5)


def _residual_net(rng):
    """conv -> relu -> conv (+ x) -> relu; the first relu and the add fuse."""
    sd = _sd(rng, {"a": (3, 3, 3), "b": (3, 3, 3), "c": (3, 3, 1)})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    x = b.input
    y = b.relu(b.conv(x, "a"))
    y = b.add(b.conv(y, "b"), x)
    y = b.conv(b.relu(y), "c")
    return sd, b.finish(y)


def test_fused_residual_graph_matches_numpy(tmp_path, rng):
    sd, (model, tensors) = _residual_net(rng)
    m = sparsr.load(_save(tmp_path, model, tensors))
    img = rng.integers(0, 256, (11, 17, 3), dtype=np.uint8)
    x = img.transpose(2, 0, 1).astype(np.float64)
    y = np.maximum(conv_ref(x, sd["a.weight"], sd["a.bias"], 1), 0)
    y = conv_ref(y, sd["b.weight"], sd["b.bias"], 1) + x
    want = conv_ref(np.maximum(y, 0), sd["c.weight"], sd["c.bias"], 0)
    got = _run(m, img)
    assert np.abs(got - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    plan = m._executor.plan(11, 17)
    # relu after a fuses into a; the add fuses into b; the second relu stays.
    assert [s.op.node.op for s in plan.steps] == ["conv2d", "conv2d", "relu", "conv2d"]
    assert plan.steps[0].act == "relu" and plan.steps[1].residual == "image"


def test_inplace_only_when_nothing_reads_the_input_later(tmp_path, rng):
    sd, (model, tensors) = _residual_net(rng)
    m = sparsr.load(_save(tmp_path, model, tensors))
    steps = m._executor.plan(8, 8).steps
    relu = next(s for s in steps if s.op.node.op == "relu")
    assert relu.inplace                         # b's output is read by nobody else
    # A value read twice is never overwritten in place.
    sd = _sd(rng, {"a": (3, 3, 3)})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    t = b.conv(b.input, "a")
    r = b.sigmoid(t)
    out = b.mul(r, t)
    model, tensors = b.finish(out)
    m = sparsr.load(_save(tmp_path, model, tensors, "silu.pt"))
    sig = next(s for s in m._executor.plan(8, 8).steps if s.op.node.op == "sigmoid")
    assert not sig.inplace
    img = rng.integers(0, 256, (9, 10, 3), dtype=np.uint8)
    t_ref = conv_ref(img.transpose(2, 0, 1), sd["a.weight"], sd["a.bias"], 1)
    want = t_ref / (1 + np.exp(-t_ref))
    assert np.abs(_run(m, img) - want).max() < 1e-3 * np.abs(want).max()


def test_views_are_never_overwritten_while_their_source_lives(tmp_path, rng):
    """relu of a slice must not clobber the value it is a view of."""
    sd = _sd(rng, {"a": (4, 3, 3), "b": (3, 4, 1)})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    t = b.conv(b.input, "a")
    lo = b.relu(b.slice(t, 0, 2))
    both = b.concat([lo, b.slice(t, 2, 4)])
    out = b.add(b.conv(both, "b"), b.conv(t, "b"))
    model, tensors = b.finish(out)
    m = sparsr.load(_save(tmp_path, model, tensors))
    img = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    t_ref = conv_ref(img.transpose(2, 0, 1), sd["a.weight"], sd["a.bias"], 1)
    both_ref = np.concatenate([np.maximum(t_ref[:2], 0), t_ref[2:]])
    want = (conv_ref(both_ref, sd["b.weight"], sd["b.bias"], 0)
            + conv_ref(t_ref, sd["b.weight"], sd["b.bias"], 0))
    assert np.abs(_run(m, img) - want).max() < 1e-3 * np.abs(want).max()
    relu = next(s for s in m._executor.plan(7, 9).steps if s.op.node.op == "relu")
    assert not relu.inplace


def _concat_net(rng, parts=4, act=True):
    layers = {f"p{i}": (3, 3, 3) for i in range(parts)}
    layers["collect"] = (3, 3 * parts, 1)
    sd = _sd(rng, layers)
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    fea, outs = b.input, []
    for i in range(parts):
        fea = b.conv(fea, f"p{i}")
        outs.append(fea)
    y = b.conv(b.concat(outs), "collect")
    return sd, b.finish(b.relu(y) if act else y)


def test_one_by_one_conv_over_a_concat_runs_as_partial_convs(tmp_path, rng):
    sd, (model, tensors) = _concat_net(rng)
    m = sparsr.load(_save(tmp_path, model, tensors))
    steps = m._executor.plan(10, 12).steps
    kinds = [type(s.op).__name__ for s in steps]
    assert kinds.count("PartialConv") == 4 and "concat" not in [s.op.node.op for s in steps]
    # Each part dies once it has fed the next layer and its partial conv, so
    # no two parts are alive after a partial conv.
    partials = [i for i, s in enumerate(steps) if type(s.op).__name__ == "PartialConv"]
    for k, i in enumerate(partials):
        part = steps[i].inputs[0]
        released = next(j for j, s in enumerate(steps) if part in s.release)
        assert released <= (partials[k + 1] if k + 1 < len(partials) else i)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    fea, outs = img.transpose(2, 0, 1).astype(np.float64), []
    for i in range(4):
        fea = conv_ref(fea, sd[f"p{i}.weight"], sd[f"p{i}.bias"], 1)
        outs.append(fea)
    want = np.maximum(conv_ref(np.concatenate(outs), sd["collect.weight"], sd["collect.bias"],
                               0), 0)
    assert np.abs(_run(m, img) - want).max() < 1e-3 * np.abs(want).max()


def test_restart_from_kept_values_equals_a_full_run_any_number_of_times(tmp_path, rng):
    sd, (model, tensors) = _concat_net(rng)
    m = sparsr.load(_save(tmp_path, model, tensors))
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    full = m.forward(img).output
    stages = m.stages(img, ["p2", "p3"])
    for _ in range(2):        # the accumulating partial convs must not corrupt the cache
        for start in ("p2", "p3"):
            again = m.forward(img, cache=stages, start=start).output
            np.testing.assert_array_equal(again, full)
    w = m.conv_weight("p3").copy()
    m.set_conv_weight("p3", w * 0.5)
    changed = m.forward(img, cache=stages, start="p3").output
    assert np.abs(changed - full).max() > 1e-3
    np.testing.assert_allclose(changed, m.forward(img).output, rtol=0, atol=1e-4)


# -- refusals ---------------------------------------------------------------------------

def _tiny(rng):
    sd = _sd(rng, {"a": (3, 3, 3)})
    b = GraphBuilder(sd, IO(scale=1, range=1.0), "tiny")
    return b.finish(b.conv(b.input, "a"))


def _refused(tmp_path, model, tensors, match):
    path = _save(tmp_path, model, tensors, "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        sparsr.load(path)


def test_a_cycle_is_refused(tmp_path, rng):
    model, tensors = _tiny(rng)
    node = dict(model["graph"]["nodes"][0])
    model["graph"]["nodes"] = [dict(node, name="first", inputs=["later"], outputs=["x1"]),
                               dict(node, name="second", inputs=["x1"], outputs=["later"])]
    model["graph"]["outputs"] = ["later"]
    _refused(tmp_path, model, tensors, "reads 'later' before it is written")


def test_a_dangling_value_and_an_unwritten_input_are_refused(tmp_path, rng):
    model, tensors = _tiny(rng)
    node = model["graph"]["nodes"][0]
    extra = dict(node, name="extra", outputs=["unused"])
    model["graph"]["nodes"].append(extra)
    _refused(tmp_path, model, tensors, "dangling.*unused")
    model, tensors = _tiny(rng)
    model["graph"]["nodes"][0]["inputs"] = ["nowhere"]
    _refused(tmp_path, model, tensors, "reads 'nowhere' which no node writes")


def test_an_unknown_op_is_named(tmp_path, rng):
    model, tensors = _tiny(rng)
    model["graph"]["nodes"][0]["op"] = "layer_norm"
    _refused(tmp_path, model, tensors, "node 'a'.*unsupported op 'layer_norm'")


def test_failing_shape_inference_is_refused_at_load(tmp_path, rng):
    sd = _sd(rng, {"a": (3, 3, 3), "b": (3, 5, 3)})       # b expects 5 input channels
    b = GraphBuilder(sd, IO(scale=1, range=1.0), "tiny")
    model, tensors = b.finish(b.conv(b.conv(b.input, "a"), "b"))
    _refused(tmp_path, model, tensors, "shape inference fails.*'b'.*3 channels.*expects 5")


def test_bad_attributes_tensors_and_io_are_named(tmp_path, rng):
    model, tensors = _tiny(rng)
    model["graph"]["nodes"][0]["attrs"]["stride"] = "two"
    _refused(tmp_path, model, tensors, "'stride' must be an int or a pair")
    model, tensors = _tiny(rng)
    model["graph"]["nodes"][0]["params"]["weight"] = "missing.weight"
    _refused(tmp_path, model, tensors, "weight tensor 'missing.weight' is not in the file")
    model, tensors = _tiny(rng)
    tensors["a.weight"] = np.full_like(tensors["a.weight"], np.nan)
    _refused(tmp_path, model, tensors, "NaN")
    model, tensors = _tiny(rng)
    model["io"]["scale"] = -2
    _refused(tmp_path, model, tensors, "io.scale")
    model, tensors = _tiny(rng)
    model["graph"]["nodes"][0] = json.loads('{"op": 3}')
    _refused(tmp_path, model, tensors, "'op' and 'name' must be strings")


def test_an_image_too_small_for_the_network_is_an_image_error(tmp_path, rng):
    sd = _sd(rng, {"a": (3, 3, 3)})
    b = GraphBuilder(sd, IO(scale=1, range=1.0), "tiny")
    # Back to the input size (the loader checks the output against io.scale).
    model, tensors = b.finish(b.resize(b.conv(b.input, "a", padding=0), "bilinear",
                                       like=b.input))
    m = sparsr.load(_save(tmp_path, model, tensors))
    with pytest.raises(ImageError, match="does not fit this network"):
        m.forward(np.zeros((2, 9, 3), np.uint8))


def test_pooled_buffers_are_released_on_request(tmp_path, rng):
    from sparsr import _core
    sd = _sd(rng, {"a": (64, 3, 3), "b": (3, 64, 1)})
    b = GraphBuilder(sd, IO(scale=1, range=255.0), "tiny")
    model, tensors = b.finish(b.conv(b.conv(b.input, "a"), "b"))
    # The input and output features (> 1 MB) go back to the pool when freed.
    m = sparsr.load(_save(tmp_path, model, tensors))
    m.forward(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8))
    _core.release_buffers()
    m.forward(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8))
    held = _core.pooled_bytes()
    assert held > 0
    assert _core.release_buffers() == held and _core.pooled_bytes() == 0


def test_the_pool_reuses_a_slightly_larger_buffer_and_lets_the_oldest_go_first():
    from sparsr import _core

    def mib(n):                          # a feature of about n MiB
        return _core.Feature(1, n * 1024 * 1024 // (4 * 1040) - 2, 1024)

    _core.release_buffers()
    old = _core.set_pool_limit(64 << 20)
    try:
        a = mib(20)
        del a
        before = _core.mapped_bytes()
        b = mib(19)                      # served by the 20 MiB buffer freed
        assert _core.mapped_bytes() == before
        c, d = mib(30), mib(31)
        del b, c
        before = _core.mapped_bytes()
        del d                            # over the limit: the oldest (b's buffer) goes
        assert _core.pooled_bytes() <= 64 << 20
        e = mib(31)
        assert _core.mapped_bytes() == before
        f = mib(20)
        assert _core.mapped_bytes() > before
        del e, f
        _core.set_pool_limit(16 << 20)   # a lower limit lets go of what is over it
        assert _core.pooled_bytes() <= 16 << 20
    finally:
        _core.set_pool_limit(old)
        _core.release_buffers()


def test_live_feature_bytes_and_their_peak_count_every_feature():
    from sparsr import _core
    from sparsr.executor import feature_bytes

    _core.reset_peak_feature_bytes()
    base = _core.live_feature_bytes()
    small = _core.Feature(3, 5, 7)                 # from malloc
    big = _core.Feature(64, 100, 100)              # from the pool
    sizes = feature_bytes(3, 5, 7) + feature_bytes(64, 100, 100)
    assert sizes <= _core.live_feature_bytes() - base <= sizes + 8192
    del big
    assert _core.live_feature_bytes() - base < feature_bytes(3, 5, 7) + 4096
    peak = _core.reset_peak_feature_bytes()
    assert sizes <= peak - base <= sizes + 8192
    # The next peak starts from the bytes alive.
    assert _core.reset_peak_feature_bytes() == _core.live_feature_bytes()
    del small
    assert _core.live_feature_bytes() == base


def test_planned_memory_bounds_a_run_before_allocating(tmp_path, rng):
    sd, (model, tensors) = _residual_net(rng)
    path = _save(tmp_path, model, tensors)
    m = sparsr.load(path)
    small = m._executor.plan(20, 30).peak_bytes
    big = m._executor.plan(40, 60).peak_bytes
    assert 3.5 < big / small < 4.5              # features scale with the pixels
    tight = sparsr.load(path, max_memory=small)
    tight.forward(np.zeros((20, 30, 3), np.uint8))
    # Above the budget the image runs in bands (test_bands.py), the same image:
    # at a budget between what bands of one row need and the whole-image peak.
    img = np.random.default_rng(0).integers(0, 256, (160, 60, 3), np.uint8)
    whole = m._executor.plan(160, 60).peak_bytes
    least = m.execution(160, 60, tile=1).peak_bytes
    assert least < whole
    tight = sparsr.load(path, max_memory=(least + whole) // 2)
    assert tight.execution(160, 60).band_rows < 160
    assert np.abs(tight.forward(img).output - m.forward(img).output).max() < 1e-3
    tiny = sparsr.load(path, max_memory=small // 50)
    with pytest.raises(ImageError, match=r"needs about .* even in bands.*max_memory"):
        tiny.forward(img)


def test_smsr_plan_accounts_for_its_scratch(smsr_model):
    plan = smsr_model._executor.plan(360, 640)
    # The 64-channel features of a module, its dense channels, the mask branch
    # and the accumulated collect: a few hundred MB at 640x360, not a few MB.
    assert 300e6 < plan.peak_bytes < 1500e6


def _mib_feature(n):
    from sparsr import _core
    return _core.Feature(1, n * 1024 * 1024 // (4 * 1040) - 2, 1024)


def test_the_band_arena_serves_features_of_any_size_from_the_room_freed():
    from sparsr import _core
    _core.release_buffers()
    assert _core.band_arena_bytes() == 0
    assert _core.reserve_band_arena(64 << 20) >= 64 << 20
    old = _core.set_arena_use(True)
    try:
        a, b = _mib_feature(20), _mib_feature(20)
        touched = _core.band_arena_touched_bytes()
        assert 40 << 20 <= touched <= 44 << 20
        del a, b                         # merged into one free block ...
        before = _core.mapped_bytes()
        c = _mib_feature(36)             # ... that holds a larger feature
        d = _mib_feature(3)
        assert _core.mapped_bytes() == before
        assert _core.band_arena_touched_bytes() == touched
        e = _mib_feature(40)             # no room left: from the pool
        assert _core.mapped_bytes() > before
        assert _core.band_arena_touched_bytes() <= 64 << 20
        # A live arena is not replaced; release drops its free pages only.
        assert _core.reserve_band_arena(128 << 20) == _core.band_arena_bytes() < 128 << 20
        _core.release_buffers()
        assert _core.band_arena_bytes() > 0
        c.numpy()[:] = 1.0               # still usable
        del c, d, e
    finally:
        _core.set_arena_use(old)
    assert _core.set_arena_use(False) is False
    f = _mib_feature(5)                  # arena use off: from the pool
    assert _core.band_arena_touched_bytes() <= 64 << 20
    del f
    _core.release_buffers()
    assert _core.band_arena_bytes() == 0


@pytest.mark.parametrize("top", [True, False])
def test_features_that_outlive_a_band_from_the_arena_top_leave_its_room_whole(top):
    from sparsr import _core
    _core.release_buffers()
    _core.reserve_band_arena(64 << 20)
    old = _core.set_arena_use(True)
    try:
        a = _mib_feature(10)
        was = _core.set_arena_top(top)
        try:
            kept = _mib_feature(10)      # the rows a band keeps for the next
        finally:
            assert _core.set_arena_top(was) is top
        assert 20 << 20 <= _core.band_arena_touched_bytes() <= 22 << 20
        del a
        c = _mib_feature(50)             # the next band's feature
        # From the arena when the kept rows sit at its top (its pages touched);
        # else the kept rows split its room and c comes from the pool.
        assert (_core.band_arena_touched_bytes() >= 60 << 20) == top
        assert _core.band_arena_touched_bytes() <= 64 << 20
        del c, kept
    finally:
        _core.set_arena_use(old)
    _core.release_buffers()
    assert _core.band_arena_bytes() == 0


def test_a_feature_request_scale_asks_the_pool_for_more_bytes():
    from sparsr import _core
    _core.release_buffers()
    with pytest.raises(ValueError, match="scale"):
        _core.set_request_scale(0.5)
    old = _core.set_request_scale(2.0)
    try:
        a = _mib_feature(10)
    finally:
        assert _core.set_request_scale(old) == 2.0
    del a
    before = _core.mapped_bytes()
    b = _mib_feature(19)                 # the 20 MiB buffer a asked for serves
    assert _core.mapped_bytes() == before
    del b
    _core.release_buffers()
