"""Band execution: a graph run over bands of rows, so that its intermediate
features are only as large as a band and the halo its ops need.

Each op says how its output rows follow from its input rows (ops.RowMap). A
pass runs the steps band by band down the image. Every value keeps only the
rows that later bands still read, and each step computes only rows it has not
computed before:
- a 3x3 convolution runs on exactly its new rows and reads its halo row from
  the rows beside its view (RowMap.border);
- any other op that reads beyond its own rows runs on a window reaching
  `halo` rows further, as if the window were the whole image, and gives the
  rows that the window determines exactly.

Ops without a RowMap read their whole input:
- global statistics (global_mean, global_std) are summed band by band; the
  statistic is known at the end of the pass, and the steps that depend on it
  run in the next pass;
- any other such op runs on its whole inputs at the start of the next pass.
A value read in a later pass than the one that made it is stored whole, in
memory, or in a temporary file (removed when closed, even on error) when
memory is short.

The result is that of a whole-image run up to the order of float sums: each
row is computed from the same rows (global statistics are summed in double).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from .ops import RowMap
from .ops.reduce import GlobalStat

# Ops whose outputs are views of their inputs' planes (no copy).
VIEW_OPS = {"concat", "split", "slice"}

INF = 1 << 62


@dataclass
class BandStep:
    op: Any
    inputs: list[str]
    outputs: list[str]
    act: Any
    residual: str | None
    kind: str                  # "band", "reduce", "whole" or "global"
    level: int                 # the pass that runs it
    row_map: RowMap | None


@dataclass
class Work:
    """One step's work in one band: output rows [a, b); the rows of each input
    it reads (None: a global input, passed whole); window row 0 = output row o0."""
    step: int
    a: int
    b: int
    o0: int
    windows: list[tuple[int, int] | None]


@dataclass
class Pass:
    bands: list[list[Work]] = field(default_factory=list)
    keep: list[dict[str, int]] = field(default_factory=list)   # per band: value -> first row kept
    tallest: dict[int, int] = field(default_factory=dict)      # step -> most rows of its works


class BandPlan:
    """The passes, bands and windows of a plan for one input size."""

    def __init__(self, plan, graph, in_shape, band_rows: int):
        self.shapes = dict(plan.shapes)
        self.input = graph.inputs[0]
        self.output_name = graph.outputs[0]
        self.steps, self.output = self._rename(plan.steps, graph)
        self.shapes[self.input] = in_shape
        self._classify()
        h = in_shape[1]
        self.band_rows = max(1, min(band_rows, h))
        self.passes = [self._schedule(level, h) for level in range(self.n_passes)]
        self.shares = self._shares()

    # -- structure --------------------------------------------------------------------

    def _rename(self, steps, graph):
        """Steps with every value written once (a step accumulating into its
        input writes a new version), and the name of the graph output."""
        current: dict[str, str] = {}
        out = []
        for s in steps:
            inputs = [current.get(v, v) for v in s.inputs]
            outputs = []
            for v in s.outputs:
                name = v
                if v in current or v == self.input:
                    k = len(out)
                    while f"{v}#{k}" in self.shapes:
                        k += 1000
                    name = f"{v}#{k}"
                    self.shapes[name] = self.shapes[v]
                current[v] = name
                outputs.append(name)
            residual = inputs[-1] if s.residual else None     # a fused residual is the last input
            row_map = s.op.row_map() if hasattr(s.op, "row_map") else None
            expand = getattr(s.op, "band_steps", None)
            if row_map is not None and expand is not None and s.act is None and residual is None:
                # An op that is a chain of steps of its own (an SMSR module).
                for op, ins, outs, shapes in expand(inputs[0], outputs[0],
                                                    self.shapes[outputs[0]]):
                    self.shapes.update(zip(outs, shapes))
                    out.append(BandStep(op, ins, outs, None, None, "", 0, op.row_map()))
                continue
            out.append(BandStep(s.op, inputs, outputs, s.act, residual, "", 0, row_map))
        return out, current.get(graph.outputs[0], graph.outputs[0])

    def _classify(self):
        self.level = {self.input: 0}
        self.is_global = {self.input: False}
        for s in self.steps:
            spatial = [v for v in s.inputs if not self.is_global[v]]
            lv = max((self.level[v] for v in s.inputs), default=0)
            if not spatial:
                s.kind, glob = "global", True
            elif isinstance(s.op, GlobalStat):
                s.kind, glob, lv = "reduce", True, lv + 1
            elif s.row_map is None:
                s.kind, glob, lv = "whole", False, lv + 1
            else:
                s.kind, glob = "band", False
            s.level = lv
            for v in s.outputs:
                self.level[v], self.is_global[v] = lv, glob
        self.n_passes = 1 + max((s.level for s in self.steps), default=0)
        # When each value is read: the passes of its readers.
        # (A whole-input step's input read for its shape alone is not read.)
        self.read_in: dict[str, list[int]] = {}
        for s in self.steps:
            run_pass = s.level - 1 if s.kind == "reduce" else s.level
            for k, v in enumerate(s.inputs):
                if not (s.kind == "whole" and k in shape_inputs(s)):
                    self.read_in.setdefault(v, []).append(run_pass)
        # Values stored whole: read in a later pass than the one that made
        # them, made by a whole-input op, or the graph output.
        self.stored = {self.output}
        for s in self.steps:
            for v in s.outputs:
                if self.is_global[v]:
                    continue
                if s.kind == "whole" or any(p > s.level for p in self.read_in.get(v, [])):
                    self.stored.add(v)
        self.last_pass = {v: max(p) for v, p in self.read_in.items()}

    def _shares(self) -> dict[str, str]:
        """Stored values that take over the store of one read for the last
        time in the pass that makes them (value -> the one whose store it
        takes): same shape, and each row of the new value written only once
        no later read of the old one reaches it (nor the rows beside its
        window, for a step that reads them: RowMap.border). SMSR's passes
        each replace a module's output, the running sum and the collect's sum
        so: three stores instead of six. Reads through views are not
        followed: an old value read by a view keeps its store."""
        shares: dict[str, str] = {}
        for level, p in enumerate(self.passes):
            made = [v for i in self.band_steps(level) for v in self.steps[i].outputs
                    if v in self.stored and v != self.output]
            old = [u for u in self.stored if u not in (self.output, self.input)
                   and self.level[u] < level and self.last_pass.get(u) == level]
            viewed = {u for st in self.steps if st.level == level
                      and getattr(getattr(st.op, "node", None), "op", None) in VIEW_OPS
                      for u in st.inputs}
            free = [u for u in old if u not in viewed]
            for w in made:
                for u in free:
                    if self.shapes[u] == self.shapes[w] and self._overwrites_safely(p, u, w):
                        shares[w] = u
                        free.remove(u)
                        break
        return shares

    def _overwrites_safely(self, p: Pass, u: str, w: str) -> bool:
        written = 0                         # rows [0, written) of w are in u's store
        for works in p.bands:
            for work in works:
                s = self.steps[work.step]
                beside = 1 if s.row_map is not None and s.row_map.border else 0
                for v, win in zip(s.inputs, work.windows):
                    if v == u and win is not None and win[0] - beside < written:
                        return False
                if w in s.outputs:
                    written = max(written, work.b)
        return True

    def store_bytes(self) -> int:
        """The most bytes of values stored whole alive in one pass, the graph
        output aside (a value that took over another's store counts once)."""
        from .executor import feature_bytes
        most = 0
        for level in range(self.n_passes):
            alive = {self._first_owner(v) for v in self.stored if v != self.output
                     and self.level[v] <= level <= self.last_pass.get(v, -1)}
            most = max(most, sum(feature_bytes(*self.shapes[v]) for v in alive))
        return most

    def _first_owner(self, v: str) -> str:
        """The value whose store v has (taken over from value to value)."""
        while v in self.shares:
            v = self.shares[v]
        return v

    def output_bytes(self) -> int:
        from .executor import feature_bytes
        return feature_bytes(*self.shapes[self.output])

    def band_steps(self, level: int) -> list[int]:
        return [i for i, s in enumerate(self.steps) if s.kind == "band" and s.level == level]

    # -- schedule ---------------------------------------------------------------------

    def _schedule(self, level: int, height: int) -> Pass:
        """Which rows each band step computes in each band of pass `level`."""
        steps = self.band_steps(level)
        result = Pass()
        if not steps:
            return result
        made = {v for i in steps for v in self.steps[i].outputs}
        reduce_inputs = {v for s in self.steps if s.kind == "reduce" and s.level - 1 == level
                         for v in s.inputs}
        sinks = [v for v in made if v in self.stored or v in reduce_inputs]
        done = {i: 0 for i in steps}
        need_log: list[dict[str, int]] = []
        for r0 in range(0, height, self.band_rows):
            r1 = min(height, r0 + self.band_rows)
            need_lo: dict[str, int] = {}
            need_hi: dict[str, int] = {}
            for v in sinks:
                hv = self.shapes[v][1]
                need_hi[v] = hv if r1 == height else -(-r1 * hv // height)
            works = []
            for i in reversed(steps):
                s = self.steps[i]
                a = done[i]
                b = max([a] + [need_hi.get(o, 0) for o in s.outputs])
                if b <= a:
                    continue
                work = self._work(i, s, a, b)
                n_read = len(s.inputs) - (s.residual is not None)
                for k, (v, win) in enumerate(zip(s.inputs, work.windows)):
                    if win is None:
                        continue
                    lo, hi = win
                    # The convolution's input reads a row beside its window,
                    # a fused residual (the last input, which may be the same
                    # value) does not.
                    if s.row_map.border and k < n_read:
                        lo, hi = max(0, lo - 1), min(self.shapes[v][1], hi + 1)
                    need_lo[v] = min(need_lo.get(v, INF), lo)
                    need_hi[v] = max(need_hi.get(v, 0), hi)
                done[i] = b
                works.append(work)
            result.bands.append(works[::-1])
            need_log.append(need_lo)
        # Rows of a value kept after band k: the first that band k or a later
        # one reads.
        later: dict[str, int] = {}
        for need_lo in reversed(need_log):
            for v, lo in need_lo.items():
                later[v] = min(later.get(v, INF), lo)
            result.keep.append(dict(later))
        result.keep.reverse()
        for works in result.bands:
            for w in works:
                result.tallest[w.step] = max(result.tallest.get(w.step, 0), w.b - w.o0)
        for i in steps:
            if done[i] < self.shapes[self.steps[i].outputs[0]][1] and \
                    any(o in sinks for o in self.steps[i].outputs):
                raise RuntimeError(f"band schedule leaves rows of step {i} uncomputed")
        return result

    def _work(self, i: int, s: BandStep, a: int, b: int) -> Work:
        rm = s.row_map
        x = s.inputs[0]
        h_in = self.shapes[x][1]
        if rm.border:
            lo, hi, o0 = a, b, a
        else:
            lo = max(0, (a * rm.down) // rm.up - rm.halo)
            lo -= lo % math.lcm(rm.align, rm.down)
            hi = min(h_in, (b * rm.down - 1) // rm.up + 1 + rm.halo)
            o0 = lo * rm.up // rm.down
        windows = []
        for k, v in enumerate(s.inputs):
            if self.is_global[v]:
                windows.append(None)
            elif s.residual is not None and k == len(s.inputs) - 1:
                # A fused residual is added at every output row of the window.
                oh = s.op.infer([(self.shapes[x][0], hi - lo, self.shapes[x][2])])[0][1]
                windows.append((o0, min(self.shapes[v][1], o0 + oh)))
            else:
                windows.append((lo, hi))
        return Work(i, a, b, o0, windows)


class Files:
    """Temporary files of stored values, unlinked at once (removed when
    closed, on error too), reused by values of the same size: writing over
    pages the page cache already holds is several times faster than into new
    ones (measured: 10 against 2.6 GB/s)."""

    def __init__(self):
        self.free: dict[int, list] = {}

    def take(self, size: int):
        if self.free.get(size):
            return self.free[size].pop()
        f = tempfile.TemporaryFile(prefix="sparsr-")
        try:
            f.truncate(size)
        except BaseException:
            f.close()
            raise
        return f

    def give(self, f, size: int) -> None:
        self.free.setdefault(size, []).append(f)

    def close(self) -> None:
        for files in self.free.values():
            for f in files:
                f.close()
        self.free.clear()


class Store:
    """A whole value kept between passes: a feature in memory, or its planes
    in a temporary file of `files`, read back a window at a time
    (_core.read_feature_rows). Every row is written before any is read."""

    def __init__(self, channels: int, height: int, width: int, files: Files | None,
                 spare: dict | None = None):
        self.shape = (channels, height, width)
        self.spill = files is not None
        self.files = files
        self.owner = True
        if files is not None:
            self.size = _core.feature_file_bytes(channels, height, width)
            self.file = files.take(self.size)
            self.feature = None
        else:
            self.file = None
            # A feature of a store closed at the end of the last pass, if one
            # has this shape: its rows are all written again, its borders are
            # still zero, and its pages need not be mapped and zeroed anew.
            old = spare.get(self.shape) if spare else None
            self.feature = old.pop() if old else \
                _core.Feature(channels, height, width, written=channels)

    def write(self, rows, r0: int) -> None:
        if self.spill:
            _core.write_feature_rows(self.file.fileno(), rows, self.shape[1], r0)
        else:
            _core.copy(rows, self.feature.view().rows(r0, r0 + rows.height))

    def read(self, r0: int, r1: int):
        """Rows [r0, r1) as Channels (a view when in memory); a 3x3 over them
        reads the rows beside as its padding either way."""
        if self.spill:
            return _core.read_feature_rows(self.file.fileno(), *self.shape, r0, r1)
        return self.feature.view().rows(r0, r1)

    def handover(self) -> "Store":
        """A store in this one's feature or file, for a value that overwrites
        it row by row (BandPlan.shares). This one reads on until closed, and
        then lets go without freeing them."""
        new = Store.__new__(Store)
        new.__dict__.update(self.__dict__)
        self.owner = False
        return new

    def close(self, spare: dict | None = None) -> None:
        """Lets go of the file or feature (into spare: shape -> features, for
        the stores of the next pass)."""
        if not self.owner:
            self.file = self.feature = None
            return
        if self.file is not None:
            self.files.give(self.file, self.size)
            self.file = None
        if spare is not None and self.feature is not None:
            spare.setdefault(self.shape, []).append(self.feature)
        self.feature = None


class OutputArray:
    """The graph output, written band by band into an (H, W, C) float32 array:
    the layout images take, with no whole feature beside it."""

    def __init__(self, channels: int, height: int, width: int):
        self.shape = (channels, height, width)
        self.array = np.empty((height, width, channels), np.float32)

    def write(self, rows, r0: int) -> None:
        _core.copy_to_hwc(rows, self.array[r0:r0 + rows.height])

    def close(self) -> None:
        self.array = None


class Statistic:
    """A global statistic's input, band by band: each band's mean and
    variance, merged in double (Chan et al.'s pairwise update: no cancellation)."""

    def __init__(self, channels: int, isa: str | None):
        self.isa = isa
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.n = 0
        self._mean = _core.Feature(channels, 1, 1).view()
        self._std = _core.Feature(channels, 1, 1).view()

    def add(self, rows) -> None:
        _core.global_stats(rows, mean=self._mean, std=self._std, isa=self.isa)
        mean = self._mean.numpy().ravel().astype(np.float64)
        var = np.square(self._std.numpy().ravel().astype(np.float64))
        k = rows.height * rows.width
        n = self.n + k
        delta = mean - self.mean
        self.mean += delta * (k / n)
        self.m2 += var * k + np.square(delta) * (self.n * k / n)
        self.n = n

    def value(self, stat: str):
        v = self.mean if stat == "mean" else np.sqrt(np.maximum(self.m2 / self.n, 0.0))
        return _core.Feature.from_numpy(v.astype(np.float32).reshape(-1, 1, 1)).view()


def run_bands(bplan: BandPlan, x, rt, spill: bool = False, progress=None):
    """Runs the band plan on x (Channels of the whole input) with run context
    rt; returns the graph output (an (H, W, C) float32 array) and the masks in
    step order. progress(fraction) is called after each band."""
    values: dict[str, Any] = {bplan.input: x}          # global values and whole inputs
    total = sum(len(p.bands) for p in bplan.passes) or 1
    count = [0]

    def band_done():
        count[0] += 1
        if progress is not None:
            progress(count[0] / total)

    stores: dict[str, Store] = {}
    spare: dict[tuple, list] = {}         # features of the stores closed after the last pass
    files = Files() if spill else None
    masks: dict[int, list[np.ndarray]] = {}
    done = False
    try:
        for level, p in enumerate(bplan.passes):
            if any(s.level == level and s.kind == "whole" for s in bplan.steps):
                spare.clear()      # whole-input steps hold no more than they did
            _run_whole_steps(bplan, level, values, stores, rt, files, masks)
            stats = {i: Statistic(bplan.shapes[s.inputs[0]][0], rt.isa)
                     for i, s in enumerate(bplan.steps)
                     if s.kind == "reduce" and s.level - 1 == level}
            for i, stat in stats.items():
                v = bplan.steps[i].inputs[0]
                if bplan.level[v] < level or v == bplan.input:
                    _reduce_whole(bplan, v, values, stores, stat)
            _run_pass(bplan, level, p, values, stores, stats, rt, files, masks, band_done, spare)
            for i, stat in stats.items():
                s = bplan.steps[i]
                values[s.outputs[0]] = stat.value(s.op.stat)
            for v in [v for v in stores if bplan.last_pass.get(v, -1) <= level
                      and v != bplan.output]:
                stores.pop(v).close(spare)
        st = stores[bplan.output]
        out = st.array if isinstance(st, OutputArray) else \
            st.read(0, st.shape[1]).numpy().transpose(1, 2, 0)
        done = True
        return out, [np.concatenate(masks[i], axis=0) for i in sorted(masks)]
    finally:
        _core.set_request_scale(1.0)
        for v, st in stores.items():
            if v != bplan.output or not done:
                st.close()
        if files is not None:
            files.close()


class ShapeOnly:
    """An input an op reads for its shape alone (Op.shape_inputs)."""

    def __init__(self, shape):
        self.channels, self.height, self.width = shape

    def __len__(self) -> int:
        return self.channels


def shape_inputs(s: BandStep) -> tuple[int, ...]:
    return s.op.shape_inputs() if hasattr(s.op, "shape_inputs") else ()


def _whole(bplan, v, values, stores):
    if v in values:
        return values[v]
    st = stores[v]
    return st.read(0, st.shape[1])


def _run_whole_steps(bplan, level, values, stores, rt, files, masks):
    for i, s in enumerate(bplan.steps):
        if s.level != level or s.kind not in ("global", "whole"):
            continue
        shaped = shape_inputs(s)
        inputs = [ShapeOnly(bplan.shapes[v]) if k in shaped else _whole(bplan, v, values, stores)
                  for k, v in enumerate(s.inputs)]
        outs = _call(s, rt, inputs, masks, i, None)
        for v, o in zip(s.outputs, outs):
            if bplan.is_global[v]:
                values[v] = o
            else:
                st = stores[v] = Store(*bplan.shapes[v], files if v != bplan.output else None)
                st.write(o, 0)


def _reduce_whole(bplan, v, values, stores, stat):
    h = bplan.shapes[v][1]
    step = max(1, bplan.band_rows)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        if v in values:
            stat.add(values[v].rows(r0, r1))
        else:
            stat.add(stores[v].read(r0, r1))


def _call(s: BandStep, rt, inputs, masks, i, crop, presets=()):
    """Runs one step on its input windows; masks it gives are cropped to the
    output rows (crop: (first, last) window rows) and kept per step. presets:
    (shape, make) of views its outputs may be written into (Run.new)."""
    n_masks = len(rt.masks)
    rt._inputs = inputs
    rt._inplace = False
    rt._presets = list(presets)
    if s.act is not None or s.residual is not None:
        res = inputs[-1] if s.residual is not None else None
        outs = s.op.run_fused(rt, inputs[:1], s.act, res)
    else:
        outs = s.op.run(rt, inputs)
    rt._inputs = []
    rt._presets = []
    for m in rt.masks[n_masks:]:
        masks.setdefault(i, []).append(m if crop is None else m[crop[0]:crop[1]])
    del rt.masks[n_masks:]
    return outs


def _run_pass(bplan, level, p: Pass, values, stores, stats, rt, files, masks, band_done,
              spare):
    steps = bplan.steps
    for i in bplan.band_steps(level):
        for v in steps[i].outputs:
            if v == bplan.output and v not in bplan.read_in:
                stores[v] = OutputArray(*bplan.shapes[v])
            elif v in bplan.shares:
                stores[v] = stores[bplan.shares[v]].handover()
            elif v in bplan.stored:
                stores[v] = Store(*bplan.shapes[v], files if v != bplan.output else None,
                                  spare)
    spare.clear()          # held no longer than the stores they could have been
    reducers = {}
    for i in stats:
        reducers.setdefault(steps[i].inputs[0], []).append(stats[i])
    arena = _core.set_arena_use(True)
    try:
        _run_bands_of(bplan, p, values, stores, stats, reducers, rt, masks, band_done)
    finally:
        _core.set_arena_use(arena)


def _run_bands_of(bplan, p: Pass, values, stores, stats, reducers, rt, masks, band_done):
    steps = bplan.steps
    buffers: dict[str, tuple[Any, int]] = {}     # value -> (Channels, image row of its row 0)

    def window(v, lo, hi):
        if v in values:
            return values[v].rows(lo, hi)
        if v in buffers:
            ch, first = buffers[v]
            return ch.rows(lo - first, hi - first)
        return stores[v].read(lo, hi)

    for k, works in enumerate(p.bands):
        keep = p.keep[k]
        later = p.keep[k + 1] if k + 1 < len(p.bands) else {}
        # A buffer goes after its last reader in this band, unless a later band reads it.
        last_read: dict[str, int] = {}
        for j, w in enumerate(works):
            for v in steps[w.step].inputs:
                last_read[v] = j
        for j, w in enumerate(works):
            s = steps[w.step]
            inputs = [values[v] if win is None else window(v, *win)
                      for v, win in zip(s.inputs, w.windows)]
            ready: dict[str, tuple] = {}
            # What the step makes asks the pool for the bytes of its tallest
            # work (the first and the last band are shorter): the buffers of
            # one band then serve the next, whatever its height.
            _core.set_request_scale(p.tallest[w.step] / (w.b - w.o0))
            outs = _call(s, rt, inputs, masks, w.step, (w.a - w.o0, w.b - w.o0),
                         _merged_outputs(bplan, s, w, keep, buffers, stores, ready))
            del inputs
            for v, o in zip(s.outputs, outs):
                if o.height != w.b - w.o0 or w.a != w.o0:
                    if o.height < w.b - w.o0:
                        raise RuntimeError(f"band window of step {w.step} gives "
                                           f"{o.height} rows, {w.b - w.o0} expected")
                    o = o.rows(w.a - w.o0, w.b - w.o0)
                for stat in reducers.get(v, []):
                    stat.add(o)
                if v in ready and o is ready[v][2]:
                    # Written straight below the rows kept from the band before.
                    buffers[v] = ready.pop(v)[:2]
                    continue
                st = stores.get(v)
                if st is not None:
                    st.write(o, w.a)
                    if isinstance(st, Store) and not st.spill:
                        buffers[v] = (st.feature.view(), 0)
                        continue
                first = keep.get(v, INF)
                if first >= w.a:
                    buffers[v] = (o, w.a)
                    continue
                merged = _with_kept_rows(bplan, buffers, v, first, w.a, w.b)
                _core.copy(o, merged.rows(w.a - first, w.b - first))
                buffers[v] = (merged, first)
            del outs, o
            for v in dict.fromkeys(list(s.inputs) + list(s.outputs)):
                if last_read.get(v, -1) <= j and v in buffers:
                    _trim(buffers, stores, later, v)
        _core.set_request_scale(1.0)
        for v in list(buffers):
            _trim(buffers, stores, later, v)
        band_done()


def _merged_outputs(bplan, s: BandStep, w: Work, keep, buffers, stores, ready) -> list:
    """Presets (Run.new) for the outputs of step s that keep rows from the
    band before, when the step's rows are exactly the new ones: an op that
    asks for a feature of the new rows' shape gets the rows below the kept
    ones in a buffer that holds both (made then, the kept rows copied in; in
    ready: value -> (buffer, its first row, the view)). Saves copying the new
    rows after the op, a whole band's feature each."""
    presets = []
    if w.a != w.o0:
        return presets
    for v in s.outputs:
        first = keep.get(v, INF)
        if first >= w.a or v in stores or v not in buffers:
            continue
        c, _, width = bplan.shapes[v]

        def make(v=v, first=first):
            buf = _with_kept_rows(bplan, buffers, v, first, w.a, w.b)
            ready[v] = (buf, first, buf.rows(w.a - first, w.b - first))
            return ready[v][2]
        presets.append(((c, w.b - w.a, width), make))
    return presets


def _with_kept_rows(bplan, buffers, v, first: int, a: int, b: int):
    """A buffer for rows [first, b) of v, its rows [first, a) copied from v's
    buffer (the rows kept from the band before); rows [a, b) are the caller's."""
    old, old_first = buffers[v]
    c, _, width = bplan.shapes[v]
    buf = _core.Feature(c, b - first, width, written=c).view()
    _core.copy(old.rows(first - old_first, a - old_first), buf.rows(0, a - first))
    return buf


def _trim(buffers, stores, later, v):
    """Lets go of the rows of v's buffer that no later band reads: a copy of
    the rest replaces it (a view would hold the whole buffer)."""
    ch, first = buffers[v]
    if isinstance(stores.get(v), Store) and not stores[v].spill:
        return
    end = first + ch.height
    if v not in later or later[v] >= end:
        del buffers[v]
    elif later[v] > first:
        # Outlives the band: from the band arena's top, where it does not
        # split the room the next band's features take.
        top = _core.set_arena_top(True)
        try:
            kept = _core.Feature(len(ch), end - later[v], ch.width, written=len(ch)).view()
        finally:
            _core.set_arena_top(top)
        _core.copy(ch.rows(later[v] - first, ch.height), kept)
        buffers[v] = (kept, later[v])
