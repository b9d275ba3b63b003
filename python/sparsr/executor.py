"""The executor: plans a graph for an input size and runs it.

A plan is made once per input size (and cached): the shape of every value,
the fusions that the shapes allow (a conv's following ReLU, leaky ReLU or
PReLU, then residual add, run in its epilogue), when each value is read for
the last time (its buffer is released right after), and which elementwise ops
may overwrite their input in place (nothing reads it later, and no other live
value shares its planes: concat, split and slice are views).

A run can keep the values live at chosen nodes (``keep``) and a later run can
restart at such a node from them (``cache``, ``start``): a tool that changes
one layer's weights then re-runs only the nodes from that layer on.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import _core
from .bandcost import band_bytes
from .bands import VIEW_OPS, BandPlan, run_bands
from .errors import CheckpointError, ImageError, SparsrError
from .graph import Graph
from .ops import OPS, POINTWISE, BuildContext, Op, Shape
from .ops.activation import LeakyRelu, Prelu
from .ops.conv import Activation, Conv2d, MacCounter, activation_args

# The input size at which a graph's shapes are checked when it is loaded.
PROBE = 64


@dataclass
class Step:
    op: Op
    inputs: list[str]
    outputs: list[str]
    act: Activation = None          # conv2d: fused "relu" or negative slopes per channel
    residual: str | None = None     # conv2d: fused residual add (a value name)
    inplace: bool = False           # output reuses input 0's buffer
    release: list[str] = field(default_factory=list)   # values read for the last time
    accumulates: bool = False       # adds into its last input, which is also its output


class PartialConv:
    """Columns [c0, c1) of a 1x1 conv over a concat, applied to that part alone:
    the first part writes the output (with the bias), later ones add into it,
    and the last applies the conv's activation (act, in place over the sum: a
    kernel's epilogue would apply it to its part only). Each part is consumed
    as soon as it exists, instead of every part living until the concat is
    complete."""

    inplace = False

    def __init__(self, conv: Conv2d, c0: int, c1: int, first: bool, act: Activation):
        self.conv = conv
        self.node = conv.node
        self.first = first
        self.act = act
        self.packed = conv.column_slice(c0, c1, with_bias=first)

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        x = inputs[0]
        pixels = rt.full(x.height, x.width)
        if self.first:
            out = rt.new(self.conv.cout, x.height, x.width, written=self.conv.cout)
            self.packed(rt.counter, x, out, pixels, dense_pixels=pixels.count,
                        **activation_args(self.act, 0, self.conv.cout))
            return [out]
        out = inputs[1]
        self.packed(rt.counter, x, out, pixels, residual=out, dense_pixels=pixels.count)
        if isinstance(self.act, str):
            _core.relu_inplace(out)
        elif self.act is not None:
            _core.unary("prelu", out, out, slopes=self.act, isa=rt.isa)
        return [out]


class ScaleAdd:
    """mul(x, s) and then add(that, r), s a (C, 1, 1) value: one pass over x
    (a channel attention and the residual after it)."""

    inplace = True

    def __init__(self, mul: Op):
        self.node = mul.node

    def row_map(self):
        return POINTWISE

    def run(self, rt, inputs):
        x, s, r = inputs
        out = rt.output(0, (len(x), x.height, x.width))
        _core.scale_add(x, s.numpy().ravel().tolist(), r, out)
        return [out]


@dataclass
class Plan:
    shapes: dict[str, Shape]
    steps: list[Step]
    index: dict[str, int]           # node name -> step index (fused nodes: their conv's)
    peak_bytes: int = 0             # most feature memory live at once (estimated)


class Run:
    """What an op sees while it runs (see ops/__init__.py)."""

    def __init__(self, mode: str, isa: str | None):
        self.mode = mode
        self.isa = isa
        self.counter = MacCounter()
        self.masks: list[np.ndarray] = []
        self._full: dict[tuple[int, int], Any] = {}
        self._inputs: list[Any] = []
        self._inplace = False
        # Views an op's new outputs may be: (shape, make), each made and
        # taken once by a request of its shape that writes every plane (band
        # execution hands out the rows below those it keeps from the band
        # before).
        self._presets: list[tuple[Shape, Any]] = []

    def new(self, channels: int, height: int, width: int, written: int = 0):
        if written == channels:
            for k, (shape, make) in enumerate(self._presets):
                if shape == (channels, height, width):
                    del self._presets[k]
                    return make()
        return _core.Feature(channels, height, width, written=written).view()

    def output(self, i: int, shape: Shape):
        if self._inplace and i == 0:
            return self._inputs[0]
        return self.new(*shape, written=shape[0])

    def count(self, name: str, macs: int, dense_macs: int | None = None) -> None:
        self.counter.add(name, macs, macs if dense_macs is None else dense_macs)

    def full(self, height: int, width: int):
        key = (height, width)
        if key not in self._full:
            self._full[key] = _core.PixelSet.full(height, width)
        return self._full[key]


@dataclass
class Result:
    output: Any                      # _core.Channels of the graph output
    masks: list[np.ndarray]
    layers: dict[str, list[int]]     # name -> [executed MACs, dense MACs]
    kept: dict[str, Any] | None = None


class Executor:
    def __init__(self, graph: Graph, tensors: dict[str, np.ndarray], layers: dict,
                 isa: str | None, in_channels: int, allow_nonfinite: bool = False):
        graph.check(OPS, tensors)
        self.graph = graph
        self.isa = isa
        self.in_channels = in_channels
        self.ctx = BuildContext(tensors, layers, isa, allow_nonfinite)
        self.ops = [self._make(n) for n in graph.nodes]
        self._plans: dict[tuple[int, int], Plan] = {}
        self._band_plans: dict[tuple[int, int, int], BandPlan] = {}
        # Shape inference at a probe size: a graph whose shapes do not work is
        # refused at load time, not at the first image.
        try:
            self.plan(PROBE, PROBE)
        except SparsrError:
            raise
        except ValueError as e:
            raise CheckpointError(f"shape inference fails on a {PROBE}x{PROBE} input: "
                                  f"{_text(e)}") from None
        except Exception as e:
            raise CheckpointError(f"shape inference fails on a {PROBE}x{PROBE} input "
                                  f"({type(e).__name__}: {_text(e)})") from None

    def _make(self, node) -> Op:
        """The op of a node. The op checks its attrs and tensors and raises a
        CheckpointError naming what is wrong. A ValueError is how the native
        constructors refuse values (N:M weights that are not N:M, say): it
        becomes a CheckpointError naming the node. Anything else (a case the
        checks miss) does too, with its type, so that it is seen and fixed."""
        try:
            return OPS[node.op](node, self.ctx)
        except SparsrError:
            raise
        except ValueError as e:
            raise CheckpointError(f"node {node.name!r:.80} ({node.op}): {_text(e)}") from None
        except Exception as e:
            raise CheckpointError(f"node {node.name!r:.80} ({node.op}) cannot be built "
                                  f"({type(e).__name__}: {_text(e)})") from None

    def rebuild(self, names: Iterable[str]) -> None:
        """Re-makes the ops of these nodes (after their tensors changed)."""
        names = set(names)
        for i, n in enumerate(self.graph.nodes):
            if n.name in names:
                self.ops[i] = self._make(n)
        self._plans.clear()
        self._band_plans.clear()

    # -- planning -----------------------------------------------------------------

    def plan(self, height: int, width: int) -> Plan:
        key = (height, width)
        if key in self._plans:
            return self._plans[key]
        g = self.graph
        shapes: dict[str, Shape] = {g.inputs[0]: (self.in_channels, height, width)}
        for op, n in zip(self.ops, g.nodes):
            outs = op.infer([shapes[v] for v in n.inputs])
            if len(outs) != len(n.outputs):
                raise CheckpointError(f"node {n.name!r} ({n.op}) gives {len(outs)} outputs, "
                                      f"the graph names {len(n.outputs)}")
            shapes.update(zip(n.outputs, outs))
        steps = self._split_concat_convs(self._fuse(shapes), shapes)
        index = {}
        for i, s in enumerate(steps):
            index.setdefault(s.op.node.name, i)
        for name in self._fused_into:
            index[name] = index[self._fused_into[name]]
        self._lifetimes(steps)
        plan = Plan(shapes, steps, index, self._peak_bytes(steps, shapes))
        if len(self._plans) > 16:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _fuse(self, shapes: dict[str, Shape]) -> list[Step]:
        """Steps, with a conv's sole-consumer activation (ReLU, leaky ReLU,
        PReLU) and then residual add folded in."""
        g = self.graph
        consumers = g.consumers()
        producers = g.producers()
        out = g.outputs[0]
        fused: set[int] = set()
        self._fused_into: dict[str, str] = {}
        steps = []
        for i, (op, n) in enumerate(zip(self.ops, g.nodes)):
            if i in fused:
                continue
            step = Step(op, list(n.inputs), list(n.outputs))
            scaled = self._scale_add(i, shapes, consumers, producers)
            if scaled is not None:
                j, x, s, r = scaled
                fused.add(j)
                self._fused_into[g.nodes[j].name] = n.name
                steps.append(Step(ScaleAdd(op), [x, s, r], list(g.nodes[j].outputs)))
                continue
            if isinstance(op, Conv2d):
                value = n.outputs[0]

                def sole(v):
                    readers = consumers.get(v, [])
                    return readers[0] if len(readers) == 1 and v != out else None

                j = sole(value)
                act = None if j is None else self._fusable_act(self.ops[j], shapes[value][0])
                if act is not None:
                    fused.add(j)
                    self._fused_into[g.nodes[j].name] = n.name
                    step.act = act
                    value = g.nodes[j].outputs[0]
                    j = sole(value)
                if j is not None and g.nodes[j].op == "add" and len(g.nodes[j].inputs) == 2:
                    a, b = g.nodes[j].inputs
                    other = b if a == value else a
                    if (other != value and shapes[other] == shapes[value]
                            and producers.get(other, -1) < i):
                        fused.add(j)
                        self._fused_into[g.nodes[j].name] = n.name
                        step.residual = other
                        step.inputs.append(other)
                        value = g.nodes[j].outputs[0]
                step.outputs = [value]
            steps.append(step)
        return steps

    def _scale_add(self, i: int, shapes, consumers, producers):
        """(add node, x, s, r) when node i is mul(x, s) with s a (C, 1, 1) value
        and its sole reader add(mul, r) with r shaped as x; else None."""
        g = self.graph
        n = g.nodes[i]
        if n.op != "mul" or len(n.inputs) != 2:
            return None
        a, b = n.inputs
        if shapes[a][1:] == (1, 1):
            a, b = b, a
        full, small = shapes[a], shapes[b]
        if small != (full[0], 1, 1) or full[1:] == (1, 1) or a == b:
            return None
        readers = consumers.get(n.outputs[0], [])
        if len(readers) != 1 or n.outputs[0] == g.outputs[0]:
            return None
        j = readers[0]
        add = g.nodes[j]
        if add.op != "add" or len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
            return None
        r = add.inputs[1] if add.inputs[0] == n.outputs[0] else add.inputs[0]
        if shapes[r] != full or producers.get(r, -1) >= i:
            return None
        return j, a, b, r

    @staticmethod
    def _fusable_act(op: Op, channels: int) -> Activation:
        """What a conv's epilogue runs for activation op over its `channels`
        outputs: "relu", the negative slopes of a leaky ReLU or PReLU, or None
        when op is no activation an epilogue does."""
        if op.node.op == "relu":
            return "relu"
        if isinstance(op, (LeakyRelu, Prelu)):
            return op.slopes(channels)
        return None

    def _split_concat_convs(self, steps: list[Step], shapes: dict[str, Shape]) -> list[Step]:
        """A dense 1x1 conv over a concat of 3 or more separately made parts
        runs as one partial conv per part, each right after its part is made
        (SMSR's collect over its module outputs: one module output alive at a
        time instead of all of them)."""
        producer = {v: i for i, s in enumerate(steps) for v in s.outputs}
        readers: dict[str, int] = {}
        for s in steps:
            for v in s.inputs:
                readers[v] = readers.get(v, 0) + 1
        out = self.graph.outputs[0]
        moves: dict[int, list[Step]] = {}
        drop: set[int] = set()
        for i, s in enumerate(steps):
            op = s.op
            if not (isinstance(op, Conv2d) and op.splittable() and s.residual is None):
                continue
            cat = producer.get(s.inputs[0])
            if cat is None or steps[cat].op.node.op != "concat" or readers[s.inputs[0]] != 1:
                continue
            parts = steps[cat].inputs
            makers = [producer.get(v) for v in parts]
            if len(parts) < 3 or None in makers or len(set(makers)) != len(parts) \
                    or s.inputs[0] == out:
                continue
            acc = s.outputs[0]
            c0, after = 0, -1
            for k, (v, maker) in enumerate(zip(parts, makers)):
                c1 = c0 + shapes[v][0]
                last = k == len(parts) - 1
                part = PartialConv(op, c0, c1, k == 0, s.act if last else None)
                step = Step(part, [v] if k == 0 else [v, acc], [acc], accumulates=k > 0)
                after = max(after, maker)
                moves.setdefault(after, []).append(step)
                c0 = c1
            drop.update((i, cat))
        if not moves:
            return steps
        result = []
        for i, s in enumerate(steps):
            if i not in drop:
                result.append(s)
            result.extend(moves.get(i, []))
        return result

    def _lifetimes(self, steps: list[Step]) -> None:
        """When each value dies, and which steps may work in place."""
        out = self.graph.outputs[0]
        last: dict[str, int] = {}
        for i, s in enumerate(steps):
            for v in s.inputs:
                last[v] = i
        # Values that share planes (views) stand or fall together: a value's
        # buffer is its roots' buffers.
        roots: dict[str, frozenset] = {self.graph.inputs[0]: frozenset(["<input>"])}
        # Views that may list one plane twice (a concat of x with x, or with a
        # slice of x): an op writing over them in place would apply twice.
        repeats: set[str] = set()
        for s in steps:
            if s.op.node.op in VIEW_OPS:
                parts = [roots[v] for v in s.inputs]
                r = frozenset().union(*parts)
                twice = sum(map(len, parts)) > len(r) or any(v in repeats for v in s.inputs)
                for v in s.outputs:
                    roots[v] = r
                    if twice:
                        repeats.add(v)
            else:
                for v in s.outputs:
                    roots[v] = frozenset([v])
        for i, s in enumerate(steps):
            s.release = [v for v in dict.fromkeys(s.inputs) if last.get(v) == i and v != out]
            if s.op.inplace and s.inputs:
                x = s.inputs[0]
                live_after = {v for v, j in last.items() if j > i} | {out}
                shared = any(roots.get(v, frozenset()) & roots[x] for v in live_after
                             if v != x and v in roots)
                s.inplace = (last.get(x) == i and x != out and "<input>" not in roots[x]
                             and not shared and s.inputs.count(x) == 1 and x not in repeats)

    def _peak_bytes(self, steps: list[Step], shapes: dict[str, Shape]) -> int:
        """The largest sum of live feature buffers over the steps, plus each
        step's own scratch: what a run needs beyond the weights."""
        def size(v):
            return feature_bytes(*shapes[v])

        live: dict[str, int] = {self.graph.inputs[0]: size(self.graph.inputs[0])}
        # A view holds the buffers it views: they go with the last of it and them.
        roots: dict[str, set[str]] = {}
        released: set[str] = set()
        peak = 0
        for s in steps:
            view = s.op.node.op in VIEW_OPS
            new = 0
            if not (s.inplace or s.accumulates or view):
                new = sum(size(v) for v in s.outputs if v not in live)
            scratch = s.op.workspace([shapes[v] for v in s.inputs]) \
                if isinstance(s.op, Op) else 0
            peak = max(peak, sum(live.values()) + new + scratch)
            for k, v in enumerate(s.outputs):
                if view:
                    roots[v] = set().union(*(roots.get(u, {u}) for u in s.inputs))
                elif s.inplace and k == 0 and s.inputs[0] in roots:
                    roots[v] = roots[s.inputs[0]]          # written into the views
                live.setdefault(v, 0 if v in roots else size(v))
            for v in s.release:
                released.add(v)
                roots.pop(v, None)
                held = set().union(*roots.values())
                for u in [u for u in released if u in live and u not in held]:
                    del live[u]
        return peak

    # -- running --------------------------------------------------------------------

    def band_plan(self, height: int, width: int, band_rows: int) -> BandPlan:
        key = (height, width, band_rows)
        if key not in self._band_plans:
            if len(self._band_plans) > 8:
                self._band_plans.clear()
            self._band_plans[key] = BandPlan(self.plan(height, width), self.graph,
                                             (self.in_channels, height, width), band_rows)
        return self._band_plans[key]

    def run_bands(self, x, mode: str, band_rows: int, spill: bool = False,
                  pool_limit: int | None = None, progress=None,
                  arena_bytes: int = 0) -> Result:
        """Runs the graph on x over bands of band_rows input rows (bands.py):
        the same result as run(), in the memory of a band. pool_limit: the
        most bytes of freed buffers kept for reuse meanwhile (default
        BAND_POOL). arena_bytes: the size of the band arena the bands'
        features come from (0: none, the pool's)."""
        bplan = self.band_plan(x.height, x.width, band_rows)
        if pool_limit is None:
            pool_limit = BAND_POOL
        rt = Run(mode, self.isa)
        # (Setting the limit lets go of what the pool holds over it.) The
        # buffers pooled when the run ends stay, as after a whole-image run:
        # the next image of this size takes them.
        old = _core.set_pool_limit(pool_limit)
        if arena_bytes:
            _core.reserve_band_arena(arena_bytes)
        try:
            out, masks = run_bands(bplan, x, rt, spill, progress)
        finally:
            _core.set_pool_limit(old)
            # Its pages go back to the OS: what follows (the output's
            # conversion) is not counted beside them. The next run touches
            # them again once, in its first band.
            _core.release_band_arena()
        return Result(out, masks, rt.counter.layers, None)

    def run(self, x, mode: str = "mask", *, keep: Iterable[str] = (),
            cache: dict[str, Any] | None = None, start: str | None = None) -> Result:
        """Runs the graph on x (a _core.Channels of the input). keep: node
        names at whose start the live values are kept in Result.kept (with the
        masks so far); cache + start: begin at node `start` from such values."""
        plan = self.plan(x.height, x.width)
        rt = Run(mode, self.isa)
        values: dict[str, Any] = {self.graph.inputs[0]: x}
        first = 0
        if start is not None:
            if cache is None or start not in cache:
                raise ValueError(f"no cached values for node {start!r}")
            first = plan.index[start]
            values.update(cache[start]["values"])
            rt.masks = list(cache[start]["masks"])
        keep_at = {plan.index[k]: k for k in keep}
        kept: dict[str, Any] = {}
        if start is not None:
            # Cached values that later steps overwrite in place get copies, so
            # that a cache serves any number of restarts.
            for v in self._mutated_from(plan, first) & set(values):
                values[v] = _copy(values[v])
        for i in range(first, len(plan.steps)):
            s = plan.steps[i]
            if i in keep_at:
                mutated = self._mutated_from(plan, i)
                kept[keep_at[i]] = {"values": {v: _copy(c) if v in mutated else c
                                               for v, c in values.items()},
                                    "masks": list(rt.masks)}
            inputs = [values[v] for v in s.inputs]
            rt._inputs = inputs
            rt._inplace = s.inplace
            if s.act is not None or s.residual is not None:
                outs = s.op.run_fused(rt, inputs[:1], s.act,
                                      values[s.residual] if s.residual else None)
            else:
                outs = s.op.run(rt, inputs)
            rt._inputs = []
            for v in s.release:
                values.pop(v, None)
            values.update(zip(s.outputs, outs))
        output = values[self.graph.outputs[0]]
        return Result(output, rt.masks, rt.counter.layers, kept or None)

    @staticmethod
    def _mutated_from(plan: Plan, first: int) -> set[str]:
        """Values that steps from `first` on overwrite in place."""
        out = set()
        for s in plan.steps[first:]:
            if s.accumulates:
                out.add(s.inputs[-1])
            if s.inplace:
                out.add(s.inputs[0])
        return out

    # -- reports ----------------------------------------------------------------------

    def dense_macs(self, height: int, width: int) -> int:
        plan = self.plan(height, width)
        total = 0
        for op, n in zip(self.ops, self.graph.nodes):
            total += op.macs([plan.shapes[v] for v in n.inputs])
        return total

    def conv_rows(self) -> list[dict]:
        return [row for op in self.ops for row in op.convs()]


def feature_bytes(channels: int, height: int, width: int) -> int:
    """Bytes of a feature buffer: planes of (height + 2) rows of the padded stride."""
    ld = (width + 2 + 15) // 16 * 16
    return channels * (height + 2) * ld * 4


def _text(e: BaseException, limit: int = 200) -> str:
    """An exception's message for a CheckpointError: printable (a NUL byte from
    native code shown escaped) and cut to a length."""
    text = str(e).replace("\0", "\\0")
    return text if len(text) <= limit else text[:limit] + "..."


def _copy(channels):
    return _core.Feature.from_numpy(channels.numpy()).view()


def plan_for(executor: Executor, height: int, width: int) -> Plan:
    """The plan for this size; ImageError when the network's shapes do not work at it."""
    try:
        return executor.plan(height, width)
    except ValueError as e:
        raise ImageError(f"a {width}x{height} image does not fit this network: {e}") from None


def check_input_size(executor: Executor, height: int, width: int,
                     max_memory: int | None = None) -> Plan:
    """The plan for this size; ImageError when the network's shapes do not work
    at it, or when it needs more memory than max_memory (default: what the
    system has available), before anything is allocated."""
    plan = plan_for(executor, height, width)
    limit = max_memory if max_memory is not None else available_memory()
    if limit is not None and plan.peak_bytes > limit:
        what = "the max_memory budget" if max_memory is not None else "available"
        raise ImageError(f"a {width}x{height} image needs about {plan.peak_bytes / 2**30:.2f} GiB "
                         f"of feature memory, {limit / 2**30:.2f} GiB {what}")
    return plan


# Feature memory a run may take when no max_memory is given: above it an image
# runs in bands (at most what the system has available).
DEFAULT_BUDGET = 512 << 20
# The fewest rows of a band chosen by memory: one (slow with wide halos, but
# it runs).
MIN_BAND_ROWS = 1
# Freed buffers a band run keeps for reuse (budgeted for in band heights).
# More was tried: keeping a share of the band's working set (half of it made
# SMSR x2 at 1920x1080 8 % faster, but realesr-animevideov3 x4 at 1920x1080
# peaked at 1.56 GB against 1.37 GB).
BAND_POOL = 64 << 20


@dataclass
class Execution:
    """How one image runs: whole (band_rows None) or in bands of band_rows input
    rows, the values kept across passes in files (spill) or in memory, at
    most pool_bytes of freed buffers kept for reuse meanwhile, and the band
    features taken from a band arena of arena_bytes."""
    band_rows: int | None = None
    spill: bool = False
    peak_bytes: int = 0
    pool_bytes: int = 0
    arena_bytes: int = 0


def choose_execution(executor: Executor, height: int, width: int,
                     max_memory: int | None = None, tile: int | None = None) -> Execution:
    """Whole-image execution when its feature memory fits the budget (max_memory,
    else DEFAULT_BUDGET plus the output, capped by the memory available), else
    bands as tall as the budget allows (what a band run holds is counted by
    bandcost.band_bytes, step by step). Values kept across passes go to
    temporary files when in memory they would leave room for bands only half
    as tall (or shorter than the forced tile). tile forces bands of that many
    input rows; without max_memory its budget is at least what the whole image
    needs. The pool of freed buffers gets what the budget leaves, up to a
    band's buffers (BAND_POOL at least); the band arena the band's buffers,
    and of what the budget leaves after that, up to as much again. ImageError
    when the network's shapes do not work at this size, or when even bands of
    MIN_BAND_ROWS rows need more than max_memory."""
    plan = plan_for(executor, height, width)     # the whole image may not fit: bands will
    available = available_memory()
    out_bytes = feature_bytes(*plan.shapes[executor.graph.outputs[0]])
    # The default budget is for the work: the output (the result) comes on top.
    budget = max_memory if max_memory is not None else DEFAULT_BUDGET + out_bytes
    if available is not None:
        budget = min(budget, available)
    if tile is not None:
        if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
            raise ValueError(f"tile must be a number of rows >= 1, got {tile!r}")
        if tile >= height:
            return Execution(None, False, plan.peak_bytes)
        if max_memory is None:
            budget = max(budget, plan.peak_bytes)
    elif plan.peak_bytes <= budget:
        return Execution(None, False, plan.peak_bytes)
    least = min(height, MIN_BAND_ROWS)
    probe = executor.band_plan(height, width, tile or min(height, 32))
    # Held whole in any case: the input and the output.
    held = feature_bytes(*plan.shapes[executor.graph.inputs[0]]) + probe.output_bytes()
    stored = probe.store_bytes()

    @functools.cache
    def band(rows: int, spill: bool) -> int:
        return band_bytes(executor.band_plan(height, width, rows), spill)

    def need(rows: int, spill: bool) -> int:
        # The band buffers, and as much again in the pool (at most BAND_POOL).
        b = band(rows, spill)
        return held + (0 if spill else stored) + b + min(b, BAND_POOL)

    def execution(rows: int, spill: bool) -> Execution:
        b = band(rows, spill)
        fixed = held + (0 if spill else stored) + b
        pool = max(min(b, BAND_POOL), min(b, budget - fixed))
        # The band arena holds the band's buffers (bands.py), and where the
        # budget has room after the pool, up to as much again: the more room
        # beside the features alive, the fewer requests its free blocks cannot
        # hold. Its pages are touched as needed, but seldom all reused.
        slack = min(b, max(0, budget - fixed - pool))
        return Execution(rows, spill, fixed + pool + slack, pool, b + slack)

    if tile is not None:
        return execution(tile, need(tile, False) > budget)
    # Values kept across passes stay in memory when the bands beside them are
    # at least half as tall as with the values in files.
    in_memory = None if held + stored >= budget else _tallest(need, False, least, height,
                                                              budget)
    in_files = _tallest(need, True, least, height, budget)
    if in_files is None:
        what = "the max_memory budget" if max_memory is not None else "available"
        raise ImageError(f"a {width}x{height} image needs about {_size(need(least, True))} of "
                         f"feature memory even in bands, {_size(budget)} {what}")
    if in_memory is not None and in_memory >= max(least, in_files // 2):
        return execution(in_memory, False)
    return execution(in_files, True)


def _tallest(need, spill: bool, least: int, height: int, budget: int) -> int | None:
    """The most band rows in [least, height] whose need(rows, spill) fits the
    budget (None: not even least), to within 1/32 by bisection: need grows
    with the rows (up to the steps of the schedule). Short bands are dear to
    plan, so least is tried last."""
    if need(height, spill) <= budget:
        return height
    lo, hi, fits = least, height, False
    while hi - lo > max(1, lo // 32):
        mid = (lo + hi) // 2
        if need(mid, spill) <= budget:
            lo, fits = mid, True
        else:
            hi = mid
    return lo if fits or need(least, spill) <= budget else None


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
