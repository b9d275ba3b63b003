"""What a band run holds in memory: the band buffers of bands.py's run,
counted step by step as _run_pass allocates, keeps and trims them.

The values held whole (the input, the output and the values stored across
passes) count apart: the caller adds them. A view (split, slice, concat)
costs nothing while its band lasts, but holds the buffers it views; kept for
a later band, it becomes a copy of the kept rows. Every other step's outputs
are new buffers of the step's window, beside its inputs and its scratch
(Op.workspace), until trimmed to the rows later bands read. The global
values (channel statistics) stay to the end of the run.
"""

from __future__ import annotations

from .bands import INF, VIEW_OPS, BandPlan, shape_inputs


def band_bytes(bp: BandPlan, spill: bool, trace: list | None = None) -> int:
    """The most bytes of band buffers and scratch alive at once in a run of
    bp, with the stored values in files (spill) or in memory. trace: gets
    (pass, band, work, bytes) for each step of each band."""
    from .executor import feature_bytes

    def size(v: str, rows: int) -> int:
        c, _, w = bp.shapes[v]
        return feature_bytes(c, rows, w)

    peak = 0
    for level, p in enumerate(bp.passes):
        glob = sum(feature_bytes(*bp.shapes[v]) for v, g in bp.is_global.items()
                   if g and bp.level[v] <= level and v != bp.input)
        peak = max(peak, glob + _whole_steps(bp, level, spill, size))
        state = _Buffers(bp, spill, size, glob)
        for k, works in enumerate(p.bands):
            state.later = p.keep[k + 1] if k + 1 < len(p.bands) else {}
            last = {v: j for j, w in enumerate(works) for v in bp.steps[w.step].inputs}
            for j, w in enumerate(works):
                need = state.step(w, p.keep[k])
                peak = max(peak, need)
                if trace is not None:
                    trace.append((level, k, j, need))
                state.trim_read(bp.steps[w.step], j, last)
            state.end_band()
    return peak


class _Buffers:
    """The band buffers of one pass as _run_pass holds them."""

    def __init__(self, bp: BandPlan, spill: bool, size, glob: int):
        self.bp, self.spill, self.size, self.glob = bp, spill, size, glob
        self.held: dict[str, tuple[int, int]] = {}    # value -> rows [first, end) of its buffer
        self.views: dict[str, set[str]] = {}          # view -> the values whose buffers it holds
        self.view_end: dict[str, int] = {}            # view -> the end of its rows
        self.ghosts: dict[str, tuple[int, set[str]]] = {}   # let go, still held by views
        self.files: dict[str, int] = {}               # view -> bytes of its windows from files
        self.later: dict[str, int] = {}

    def in_store(self, v: str) -> bool:
        """Written into a whole value in memory (its band rows are views of it)."""
        if v == self.bp.output:
            return v in self.bp.read_in
        return v in self.bp.stored and not self.spill

    def live(self) -> int:
        return (self.glob + sum(self.size(v, e - f) for v, (f, e) in self.held.items())
                + sum(b for b, _ in self.ghosts.values()) + sum(self.files.values()))

    def step(self, w, keep) -> int:
        """Runs work w on the books; gives the most bytes alive meanwhile."""
        bp, size, held = self.bp, self.size, self.held
        s = bp.steps[w.step]
        reads = 0          # windows read back from files
        shapes = []
        for v, win in zip(s.inputs, w.windows):
            if win is None:
                shapes.append(bp.shapes[v])
                continue
            shapes.append((bp.shapes[v][0], win[1] - win[0], bp.shapes[v][2]))
            if self.spill and v in bp.stored and v not in held and v != bp.input:
                reads += size(v, win[1] - win[0])
        view = getattr(getattr(s.op, "node", None), "op", None) in VIEW_OPS
        kept = {v for v in s.outputs if v in held and keep.get(v, INF) < w.a
                and not self.in_store(v)}
        # An op's output that keeps rows from the band before, its rows exactly
        # the new ones, is written into a buffer that holds both
        # (bands._merged_outputs); any other kept output is merged after.
        preset = {v for v in kept if not view and w.a == w.o0 and v not in bp.stored}
        new = 0 if view else sum(size(v, w.b - (keep[v] if v in preset else w.o0))
                                 for v in s.outputs)
        scratch = s.op.workspace(shapes) if hasattr(s.op, "workspace") else 0
        need = self.live() + reads + new + scratch
        merged = sum(size(v, w.b - keep[v]) for v in kept - preset)
        need = max(need, self.live() + reads + new + merged)
        for v in s.outputs:
            if self.in_store(v):
                held.pop(v, None)
            elif v in kept:
                held[v] = (keep[v], w.b)
            elif view:
                roots = set()
                for u in s.inputs:
                    roots |= self.views.get(u, {u})
                self.views[v] = roots
                self.view_end[v] = w.b
                self.files[v] = reads + sum(self.files.get(u, 0) for u in s.inputs)
            else:
                held[v] = (w.o0, w.b)      # a crop is a view of the whole window
        return need

    def trim_read(self, s, j: int, last: dict[str, int]) -> None:
        """Trims the values of step s (work j) read by no later work of the
        band (last: value -> the band's last work reading it)."""
        for v in dict.fromkeys(list(s.inputs) + list(s.outputs)):
            if last.get(v, -1) <= j:
                self.trim(v)

    def end_band(self) -> None:
        for v in list(self.views) + list(self.held):
            self.trim(v)
        self.files.clear()

    def trim(self, v: str) -> None:
        """Lets go of the rows of v that no later band reads."""
        if v in self.views:
            self.views.pop(v)
            self.files.pop(v, None)
            end = self.view_end.pop(v)
            if v in self.later:                     # the kept rows, copied
                if self.later[v] < end:
                    self.held[v] = (self.later[v], end)
            for g in [g for g, (_, by) in self.ghosts.items() if v in by]:
                self.ghosts[g][1].discard(v)
                if not self.ghosts[g][1]:
                    del self.ghosts[g]
            return
        if v not in self.held:
            return
        first, end = self.held[v]
        by = {x for x, roots in self.views.items() if v in roots}
        if by:                                      # a view still holds the buffer
            self.ghosts[f"{v}@{first}"] = (self.size(v, end - first), by)
        if v not in self.later or self.later[v] >= end:
            del self.held[v]
        elif self.later[v] > first:
            self.held[v] = (self.later[v], end)
            if by:
                self.ghosts[f"{v}@{first}"] = (self.size(v, end - first), by)


def _whole_steps(bp: BandPlan, level: int, spill: bool, size) -> int:
    """The most a whole-input step of this pass holds: its inputs read back
    whole from files (not those it reads for their shape), and its output
    before it is stored."""
    most = 0
    for s in bp.steps:
        if s.level != level or s.kind != "whole":
            continue
        reads = sum(size(v, bp.shapes[v][1]) for k, v in enumerate(s.inputs)
                    if spill and v in bp.stored and not bp.is_global[v]
                    and k not in shape_inputs(s))
        outs = sum(size(v, bp.shapes[v][1]) for v in s.outputs if not bp.is_global[v])
        most = max(most, reads + outs)
    return most
