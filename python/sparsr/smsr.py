"""SMSR (sparse mask super-resolution) on the native kernels.

Inference as in the SMSR paper, section 4.2 "Inference phase", and the authors'
released code. Inside each sparse mask module (SMM) every conv output channel is
"dense" (computed at every pixel) or "sparse" (computed at important pixels
only, zero elsewhere), by the rounded softmax of the channel mask; the spatial
mask marks important pixels. Channels are permuted at load time so that every
layer's dense channels come first: at unimportant pixels a layer then reads
only a prefix of its input channels and writes only a prefix of its outputs,
and at important pixels it is an ordinary convolution. This computes exactly
the authors' four branches (dense->dense everywhere; dense->sparse,
sparse->dense, sparse->sparse at important pixels) with one kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from . import _core
from .errors import CheckpointError

MODES = ("mask", "dense")


@dataclass
class ConvSpec:
    """One convolution of the network, as stored in the checkpoint."""
    name: str
    weight: np.ndarray              # (cout, cin, k, k), float32, zeros included
    bias: np.ndarray | None
    format: str = "dense"
    options: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)


@dataclass
class LayerStats:
    """MACs one layer executed in one forward pass."""
    name: str
    macs: int = 0
    dense_macs: int = 0


class _Counter:
    """Accumulates executed and dense MACs per layer name."""

    def __init__(self) -> None:
        self.layers: dict[str, LayerStats] = {}

    def add(self, name: str, macs: int, dense_macs: int = 0) -> None:
        s = self.layers.setdefault(name, LayerStats(name))
        s.macs += int(macs)
        s.dense_macs += int(dense_macs)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def channel_masks(ch_mask: np.ndarray) -> np.ndarray:
    """(1, C, L, 2) learned logits -> (L, C) bool, True where a channel is dense."""
    if ch_mask.ndim != 4 or ch_mask.shape[0] != 1 or ch_mask.shape[3] != 2:
        raise CheckpointError(f"ch_mask has shape {ch_mask.shape}, expected (1, C, L, 2)")
    logits = ch_mask[0].astype(np.float32)          # (C, L, 2)
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    soft = e / e.sum(axis=2, keepdims=True)
    dense = np.rint(soft[:, :, 0]) == 1.0           # softmax -> round, column 0 = dense
    return dense.T.copy()


def available_formats() -> set[str]:
    return {k["format"] for k in _core.kernels()}


def choose_format(requested: str, weight: np.ndarray, isa: str | None) -> str:
    """The kernel format a layer runs with. "sparse" leaves the choice to the
    engine: the zero-skip (CSR) kernel where its cost model, fitted to measured
    CSR and dense kernel times, expects it to beat dense by a margin; so a
    lightly sparse layer stays dense."""
    if requested != "sparse":
        return requested
    if "csr" not in available_formats():
        return "dense"
    return "csr" if _core.csr_beneficial(np.ascontiguousarray(weight), isa) else "dense"


class _Conv:
    """A packed convolution plus its bookkeeping."""

    def __init__(self, spec: ConvSpec, isa: str | None, weight: np.ndarray | None = None,
                 with_bias: bool = True, dense_cin: int | None = None):
        w = np.ascontiguousarray(spec.weight if weight is None else weight, dtype=np.float32)
        self.name = spec.name
        self.cout, self.cin, self.k = w.shape[0], w.shape[1], w.shape[2]
        self.nonzeros = int(np.count_nonzero(w))
        self.format = choose_format(spec.format, w, isa)
        self.native = _core.Conv2d(w, spec.bias if with_bias else None, isa=isa,
                                   format=self.format, **spec.options)
        self.weight = w
        # Input channels of the whole layer this conv computes part of: dense
        # MACs are counted as for the whole layer.
        self.dense_cin = self.cin if dense_cin is None else dense_cin
        # Formats other than dense skip zero weights: only nonzeros cost a MAC.
        self.skips_zeros = self.format != "dense"
        self._nonzeros_in = {}

    def macs_per_pixel(self, cin: int, cout: int) -> int:
        if not self.skips_zeros:
            return cin * cout * self.k * self.k
        key = (cin, cout)
        if key not in self._nonzeros_in:
            self._nonzeros_in[key] = int(np.count_nonzero(self.weight[:cout, :cin]))
        return self._nonzeros_in[key]

    def __call__(self, counter: _Counter, src, dst, pixels, relu=False, cin=-1, cout=-1,
                 residual=None, dense_pixels: int | None = None) -> None:
        self.native(src, dst, pixels, relu=relu, cin=cin, cout=cout, residual=residual)
        ci = self.cin if cin < 0 else cin
        co = self.cout if cout < 0 else cout
        dense = (dense_pixels or 0) * self.dense_cin * self.cout * self.k * self.k
        counter.add(self.name, pixels.count * self.macs_per_pixel(ci, co), dense)


class _Module:
    """One SMM: spatial mask branch, four sparse mask convs, collect, attention."""

    def __init__(self, prefix: str, specs: dict[str, ConvSpec], ch_mask: np.ndarray,
                 isa: str | None, input_skip: bool = True):
        self.prefix = prefix
        # Input skip: at unimportant pixels dense outputs read only dense inputs
        # (sparse inputs are zero there). Without it they also multiply the
        # sparse inputs, as zeros: the same image, more MACs (SparSMSR "a").
        self.input_skip = input_skip
        self.mask_convs = [_Conv(specs[f"{prefix}.spa_mask.{i}"], isa) for i in (0, 3)]
        up = specs[f"{prefix}.spa_mask.5"]
        self.mask_up_weight = np.ascontiguousarray(up.weight, dtype=np.float32)
        self.mask_up_bias = np.ascontiguousarray(up.bias, dtype=np.float32)

        self.dense = channel_masks(ch_mask)                  # (L, C)
        n_layers, channels = self.dense.shape
        self.n_layers = n_layers
        # perm[i]: storage order of layer i's outputs, dense channels first.
        self.perm = [np.concatenate([np.flatnonzero(d), np.flatnonzero(~d)]) for d in self.dense]
        self.n_dense = [int(d.sum()) for d in self.dense]

        # Layer i's inputs are layer i-1's outputs in storage order, so its
        # weight columns are permuted too -- except for N:M weights, whose
        # groups of M input channels are defined in the original order: those
        # read their input through a pointer list in the original order, the
        # sparse inputs fed as zeros where they are zero (important pixels
        # around unimportant ones).
        #
        # At unimportant pixels such a layer runs instead as a zero-skip conv
        # over the dense inputs in storage order: its N:M groups lose their
        # shape once the sparse inputs are cut away, but the zeros it keeps
        # are still skipped, and so are the sparse inputs (input skip).
        self.layers, self.natural_input, self.unimportant_layers = [], [], []
        for i in range(n_layers):
            spec = specs[f"{prefix}.body.body.{i}"]
            natural = i == 0 or spec.format == "nm"
            w = spec.weight[self.perm[i]]
            stored = w if i == 0 else w[:, self.perm[i - 1]]
            self.layers.append(_Conv(spec, isa, w if natural else stored))
            self.natural_input.append(natural)
            skip = None
            if natural and i > 0 and input_skip:
                skip = _Conv(replace(spec, format="sparse", options={}), isa,
                             stored[:, :self.n_dense[i - 1]], dense_cin=channels)
            self.unimportant_layers.append(skip)
        # The collect 1x1 over the concatenated layer outputs, accumulated into
        # the module output y:
        # - at important pixels, once per pair of layers (0 + 1 after layer 1,
        #   2 + 3 after layer 3), when the pair is alive anyway;
        # - at unimportant pixels, once after the last layer, over the layers'
        #   dense channels only (the sparse ones are zero there). The dense
        #   channels of all layers share one feature for this (see forward), so
        #   a layer's sparse channels are freed as early as before.
        # y is then read and written 3 times per module instead of 8. At
        # 640x360 a masked SMSR pass is about 8 % faster; the feature of dense
        # channels (36 planes for SMSR x2) adds 34 MB, 7 %, to the peak memory.
        # Layer i stores original channel perm[i][j] at position j, so its
        # columns are permuted by perm[i].
        collect = specs[f"{prefix}.body.collect"]
        self.collect_plain = _Conv(collect, isa)
        self.collect_natural = collect.format == "nm"
        cols = [collect.weight[:, i * channels:(i + 1) * channels] for i in range(n_layers)]
        stored = [w[:, self.perm[i]] for i, w in enumerate(cols)]
        ordered = cols if self.collect_natural else stored
        self.collect_pairs = [list(range(i, min(i + 2, n_layers))) for i in range(0, n_layers, 2)]
        self.collect_convs = [_Conv(collect, isa, np.concatenate([ordered[i] for i in pair], 1),
                                    g == 0)
                              for g, pair in enumerate(self.collect_pairs)]
        if input_skip:
            # N:M groups lose their shape on the dense channels alone: those
            # run as zero-skip convs (as the N:M layers above).
            spec = replace(collect, format="sparse", options={}) if self.collect_natural \
                else collect
            prefixes = [w[:, :self.n_dense[i]] for i, w in enumerate(stored)]
            self.unimportant_collect = _Conv(spec, isa, np.concatenate(prefixes, 1),
                                             dense_cin=channels * n_layers)
        else:
            # Without input skip every channel is read, the sparse ones as zeros.
            self.unimportant_collect = _Conv(collect, isa, np.concatenate(ordered, 1))
        self.ca = [specs[f"{prefix}.ca.conv_du.{i}"] for i in (0, 2)]
        self.channels = channels
        self.dense_planes = sum(self.n_dense)   # the network sets one size for all modules

    # -- spatial mask -------------------------------------------------------

    def spatial_mask(self, counter: _Counter, x_view, h: int, w: int) -> np.ndarray:
        """(h, w) bool: True at important pixels."""
        c_mid = self.mask_convs[0].cout
        full = _core.PixelSet.full(h, w)
        f1 = _core.Feature(c_mid, h, w, written=c_mid)
        self.mask_convs[0](counter, x_view, f1.view(), full, relu=True, dense_pixels=h * w)
        hh, hw = h // 2, w // 2
        mask = np.zeros((h, w), dtype=bool)
        if hh == 0 or hw == 0:
            return mask   # the map is empty: no important pixels
        pooled = _core.Feature(c_mid, hh, hw)
        _core.avg_pool2(f1.view(), pooled.view())
        f2 = _core.Feature(c_mid, hh, hw)
        self.mask_convs[1](counter, pooled.view(), f2.view(), _core.PixelSet.full(hh, hw),
                           relu=True, dense_pixels=hh * hw)
        logits = _core.Feature(self.mask_up_weight.shape[1], 2 * hh, 2 * hw)
        _core.conv_transpose3x3_s2(f2.view(), self.mask_up_weight, self.mask_up_bias,
                                   logits.view())
        counter.add(f"{self.prefix}.spa_mask.5", hh * hw * c_mid * 2 * 9, hh * hw * c_mid * 2 * 9)
        lg = logits.numpy()
        mask[:2 * hh, :2 * hw] = lg[1] > lg[0]
        return mask

    # -- forward --------------------------------------------------------------

    def forward(self, counter: _Counter, x: _core.Feature, mode: str):
        h, w = x.height, x.width
        c = self.channels
        # written=...: planes every interior pixel of which is written below
        # need no zeroing (the sparse channels of a layer's output do).
        y = _core.Feature(c, h, w, written=c)
        if mode == "dense":
            mask = np.ones((h, w), dtype=bool)
            important = _core.PixelSet.full(h, w)
        else:
            mask = self.spatial_mask(counter, x.view(), h, w)
            important = _core.PixelSet.from_mask(mask.view(np.uint8), h, w)
        unimportant = important.complement()
        zero = _core.Feature(1, h, w)

        def inputs(stored, layer_before, natural):
            """(input at important pixels, input at unimportant pixels, channels
            read there) for a conv reading `stored`, layer layer_before's output.

            Storage order puts dense channels first: reading a prefix skips the
            sparse ones, which are zero at unimportant pixels (input skip). An
            input in the original order, or a network without input skip,
            reads every channel, the sparse ones replaced by a zero plane."""
            if layer_before < 0:
                return stored, stored, c
            order = self.perm[layer_before]
            nd = self.n_dense[layer_before]
            src = stored.select(np.argsort(order).tolist()) if natural else stored
            if self.input_skip and not natural:
                return src, src, nd
            return src, self._sparse_as_zeros(stored, layer_before, natural, zero), c

        # Every layer's dense channels, in layer order, in one feature: the
        # collect reads them at unimportant pixels after the last layer. Its
        # size is the network's largest such set (dense_planes), the same in
        # every module, so that the buffer pool reuses it (features of odd
        # sizes would pile up in the pool, one size per module). A layer's
        # sparse channels live in a feature of the usual size, freed as soon
        # as they are consumed.
        starts = np.cumsum([0] + self.n_dense).tolist()
        planes = max(self.dense_planes, starts[-1])
        dense_all = _core.Feature(planes, h, w, written=planes) if starts[-1] else None
        dense_views = [dense_all.view(list(range(starts[i], starts[i + 1]))) if nd else None
                       for i, nd in enumerate(self.n_dense)]
        src = x.view()
        pending, sparse = [], None
        for i, layer in enumerate(self.layers):
            nd = self.n_dense[i]
            parts = [dense_views[i]] if nd else []
            if nd < c:
                # Planes [0, nd) stay unused (the dense channels are in
                # dense_all); `written` spares their interiors the zeroing.
                sparse = _core.Feature(c, h, w, written=nd)
                parts.append(sparse.view(list(range(nd, c))))
            dst = _core.Channels.cat(parts)
            at_i, at_u, cin_u = inputs(src, i - 1, self.natural_input[i])
            # Dense outputs at unimportant pixels; sparse outputs stay zero
            # there (`sparse` is fresh).
            if self.unimportant_layers[i] is not None:
                self.unimportant_layers[i](counter, src, dst, unimportant, relu=True, cout=nd,
                                           dense_pixels=unimportant.count)
            else:
                layer(counter, at_u, dst, unimportant, relu=True, cin=cin_u, cout=nd,
                      dense_pixels=unimportant.count)
            layer(counter, at_i, dst, important, relu=True, dense_pixels=important.count)
            # Views hold their features: drop the previous layer's before the
            # next allocation, or three layers' features would be alive at once.
            at_i = at_u = None
            pending.append(dst)
            src = dst
            g = i // 2
            if i == self.collect_pairs[g][-1]:
                reads = [inputs(v, j, self.collect_natural)[0]
                         for v, j in zip(pending, self.collect_pairs[g])]
                self.collect_convs[g](counter, _core.Channels.cat(reads), y.view(), important,
                                      residual=y.view() if g else None,
                                      dense_pixels=important.count)
                pending, reads = [], None
        del src, dst, parts, pending, sparse, at_i, at_u
        if self.input_skip:
            views = _core.Channels.cat([d for d in dense_views if d is not None])
        else:
            views = _core.Channels.cat([self._sparse_as_zeros(d, i, self.collect_natural, zero)
                                        for i, d in enumerate(dense_views)])
        # No dense channel at all: the bias alone (a conv reading 0 inputs).
        self.unimportant_collect(counter, views if len(views) else zero.view([0]), y.view(),
                                 unimportant, cin=len(views), dense_pixels=unimportant.count)
        # Channel attention and the residual connection of the module.
        means = np.asarray(_core.channel_means(y.view()), dtype=np.float32)
        w1, w2 = self.ca
        z = np.maximum(w1.weight[:, :, 0, 0] @ means + w1.bias, 0.0)
        s = _sigmoid(w2.weight[:, :, 0, 0] @ z + w2.bias).astype(np.float32)
        counter.add(f"{self.prefix}.ca", w1.weight.size + w2.weight.size,
                    w1.weight.size + w2.weight.size)
        _core.scale_add(y.view(), s.tolist(), x.view(), y.view())
        return y, mask

    def _sparse_as_zeros(self, dense, layer: int, natural: bool,
                         zero: _core.Feature) -> _core.Channels:
        """Layer `layer`'s output as all its channels, the sparse ones read as a
        zero plane (at unimportant pixels, where they are zero): `dense` holds
        its dense channels first (None: it has none); natural: in the
        original channel order, else in storage order."""
        nd = self.n_dense[layer]
        with_zero = _core.Channels.cat(([dense] if dense is not None else []) + [zero.view([0])])
        z = len(with_zero) - 1
        if natural:
            picks = [pos if pos < nd else z for pos in np.argsort(self.perm[layer])]
        else:
            picks = list(range(nd)) + [z] * (self.channels - nd)
        return with_zero.select(picks)

@dataclass
class Stages:
    """Intermediate features of one pass, for restarting at a module."""
    x0: "_core.Feature"
    head: "_core.Feature"
    module_outputs: list = field(default_factory=list)
    masks: list = field(default_factory=list)
    mode: str = "mask"


@dataclass
class Forward:
    """The result of one forward pass."""
    output: np.ndarray          # (sH, sW, 3) float32 on 0..255, before clamping and rounding
    masks: list[np.ndarray]     # per SMM, (H, W) bool spatial masks (all True in dense mode)
    layers: dict[str, LayerStats]

    @property
    def macs(self) -> int:
        return sum(s.macs for s in self.layers.values())

    @property
    def dense_macs(self) -> int:
        return sum(s.dense_macs for s in self.layers.values())


def _conv_specs(model: dict, tensors: dict[str, np.ndarray]) -> dict[str, ConvSpec]:
    formats = model.get("layers", {})
    specs = {}
    for key in tensors:
        if not key.endswith(".weight"):
            continue
        name = key[: -len(".weight")]
        weight = tensors[key]
        if weight.ndim != 4:
            continue
        info = formats.get(name, {})
        specs[name] = ConvSpec(name, weight.astype(np.float32, copy=False),
                               tensors.get(name + ".bias"), info.get("format", "dense"),
                               {k: int(v) for k, v in info.get("options", {}).items()})
    return specs


# Every tensor the SMSR description needs, with its expected shape given the
# hyper-parameters (C features, s scale); checked before anything runs.
def expected_shapes(scale: int, n_feats: int, n_blocks: int, n_layers: int) -> dict[str, tuple]:
    C, q = n_feats, n_feats // 4
    shapes = {
        "sub_mean.weight": (3, 3, 1, 1), "sub_mean.bias": (3,),
        "add_mean.weight": (3, 3, 1, 1), "add_mean.bias": (3,),
        "head.0.weight": (C, 3, 3, 3), "head.0.bias": (C,),
        "head.2.weight": (C, C, 3, 3), "head.2.bias": (C,),
        "collect.0.weight": (C, C * n_blocks, 1, 1), "collect.0.bias": (C,),
        "collect.2.weight": (C, C, 3, 3), "collect.2.bias": (C,),
        "tail.0.weight": (3 * scale * scale, C, 3, 3), "tail.0.bias": (3 * scale * scale,),
    }
    for k in range(n_blocks):
        p = f"body.{k}"
        shapes.update({
            f"{p}.spa_mask.0.weight": (q, C, 3, 3), f"{p}.spa_mask.0.bias": (q,),
            f"{p}.spa_mask.3.weight": (q, q, 3, 3), f"{p}.spa_mask.3.bias": (q,),
            f"{p}.spa_mask.5.weight": (q, 2, 3, 3), f"{p}.spa_mask.5.bias": (2,),
            f"{p}.body.ch_mask": (1, C, n_layers, 2),
            f"{p}.body.collect.weight": (C, C * n_layers, 1, 1), f"{p}.body.collect.bias": (C,),
            f"{p}.ca.conv_du.0.weight": (C // 16, C, 1, 1), f"{p}.ca.conv_du.0.bias": (C // 16,),
            f"{p}.ca.conv_du.2.weight": (C, C // 16, 1, 1), f"{p}.ca.conv_du.2.bias": (C,),
        })
        for i in range(n_layers):
            shapes[f"{p}.body.body.{i}.weight"] = (C, C, 3, 3)
    return shapes


class SmsrNetwork:
    """An SMSR network ready to run."""

    architecture = "smsr"

    def __init__(self, model: dict, tensors: dict[str, np.ndarray], isa: str | None = None):
        try:
            self.scale = int(model["scale"])
            self.n_feats = int(model["n_feats"])
            self.n_blocks = int(model["n_blocks"])
            self.n_layers = int(model["n_layers"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"SMSR description lacks a valid {e}") from None
        expected = expected_shapes(self.scale, self.n_feats, self.n_blocks, self.n_layers)
        for key, shape in expected.items():
            if key not in tensors:
                raise CheckpointError(f"SMSR checkpoint lacks tensor {key!r}")
            if tuple(tensors[key].shape) != shape:
                raise CheckpointError(f"tensor {key!r} has shape {tuple(tensors[key].shape)}, "
                                      f"expected {shape}")
        extra = sorted(set(tensors) - set(expected))
        if extra:
            raise CheckpointError(f"SMSR checkpoint has unexpected tensors: {extra[:5]}")

        self.isa = isa
        self.input_skip = bool(model.get("input_skip", True))
        self.specs = _conv_specs(model, tensors)
        self.ch_masks = {k: tensors[f"body.{k}.body.ch_mask"] for k in range(self.n_blocks)}
        self.in_matrix, self.in_bias = self._affine(tensors, "sub_mean")
        self.out_matrix, self.out_bias = self._affine(tensors, "add_mean")
        self._build()

    def _build(self) -> None:
        specs, isa = self.specs, self.isa
        self.head = [_Conv(specs["head.0"], isa), _Conv(specs["head.2"], isa)]
        self.modules = [_Module(f"body.{k}", specs, self.ch_masks[k], isa, self.input_skip)
                        for k in range(self.n_blocks)]
        # One size for every module's feature of dense channels, so that the
        # buffer pool hands the same buffer from module to module.
        dense_planes = max(sum(m.n_dense) for m in self.modules)
        for m in self.modules:
            m.dense_planes = dense_planes
        self.collect = [_Conv(specs["collect.0"], isa), _Conv(specs["collect.2"], isa)]
        # collect.0 (1x1 over the concatenated module outputs) as one slice per
        # module, accumulated, so a module's output is freed once consumed.
        c, w = self.n_feats, specs["collect.0"].weight
        self.collect_slices = [_Conv(specs["collect.0"], isa, w[:, k * c:(k + 1) * c], k == 0)
                               for k in range(self.n_blocks)]
        self.tail = _Conv(specs["tail.0"], isa)

    def set_conv_weight(self, name: str, weight: np.ndarray, format: str | None = None) -> None:
        """Replaces one convolution's weights (same shape) and repacks; used by
        the offline tools to try sparsified weights on this engine."""
        spec = self.specs.get(name)
        if spec is None:
            raise KeyError(f"no convolution named {name!r}")
        weight = np.asarray(weight, dtype=np.float32)
        if weight.shape != spec.shape:
            raise ValueError(f"{name}: weight shape {weight.shape}, expected {spec.shape}")
        spec.weight = weight
        if format is not None:
            spec.format = format
        for k, module in enumerate(self.modules):
            if name.startswith(module.prefix + "."):
                self.modules[k] = _Module(module.prefix, self.specs, self.ch_masks[k], self.isa,
                                          self.input_skip)
                return
        self._build()

    @staticmethod
    def _affine(tensors, name):
        m = np.ascontiguousarray(tensors[f"{name}.weight"][:, :, 0, 0], dtype=np.float32)
        b = np.ascontiguousarray(tensors[f"{name}.bias"], dtype=np.float32)
        return m, b

    @property
    def convs(self) -> list[_Conv]:
        out = list(self.head)
        for m in self.modules:
            out += m.mask_convs + m.layers + [m.collect_plain]
        return out + list(self.collect) + [self.tail]

    def forward(self, rgb: np.ndarray, mode: str = "mask", cache: "Stages | None" = None,
                start_module: int = 0) -> Forward:
        """One pass. With a cache from stages(), modules before start_module are
        not run again: their outputs (and masks) are taken from the cache."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if cache is None and start_module != 0:
            raise ValueError("start_module needs a cache")
        if cache is not None and cache.mode != mode:
            raise ValueError(f"the cache was made in {cache.mode} mode")
        return self._run(rgb, mode, cache, start_module, keep=None)

    def stages(self, rgb: np.ndarray, mode: str = "mask") -> "Stages":
        """Runs the network once and keeps every module's output, so that a tool
        changing module k's weights can restart there (forward(start_module=k))."""
        keep = Stages(None, None, mode=mode)
        self._run(rgb, mode, None, 0, keep)
        return keep

    def _run(self, rgb, mode, cache, start_module, keep) -> Forward:
        counter = _Counter()
        if cache is None:
            x0, head = self._head(counter, rgb)
        else:
            x0, head = cache.x0, cache.head
        if keep is not None:
            keep.x0, keep.head = x0, head
        h, w = head.height, head.width
        full = _core.PixelSet.full(h, w)
        acc = _core.Feature(self.n_feats, h, w, written=self.n_feats)
        fea, masks = head, []
        for k, module in enumerate(self.modules):
            if k < start_module:
                fea, mask = cache.module_outputs[k], cache.masks[k]
            else:
                fea, mask = module.forward(counter, fea, mode)
            masks.append(mask)
            if keep is not None:
                keep.module_outputs.append(fea)
                keep.masks.append(mask)
            self.collect_slices[k](counter, fea.view(), acc.view(), full,
                                   residual=acc.view() if k else None, dense_pixels=h * w)
        del fea
        _core.relu_inplace(acc.view())
        body = _core.Feature(self.n_feats, h, w, written=self.n_feats)
        self.collect[1](counter, acc.view(), body.view(), full, residual=head.view(),
                        dense_pixels=h * w)
        del acc
        s = self.scale
        tail = _core.Feature(3 * s * s, h, w, written=3 * s * s)
        self.tail(counter, body.view(), tail.view(), full, dense_pixels=h * w)
        del body
        base = _core.Feature(3, s * h, s * w)
        _core.upsample_bicubic(x0.view(), s, base.view())
        out = _core.compose_image(tail.view(), base.view(), s, self.out_matrix, self.out_bias)
        return Forward(out, masks, counter.layers)

    def _head(self, counter: _Counter, rgb: np.ndarray):
        h, w = rgb.shape[:2]
        full = _core.PixelSet.full(h, w)
        x0 = _core.image_to_feature(rgb, self.in_matrix, self.in_bias)
        t = _core.Feature(self.n_feats, h, w, written=self.n_feats)
        self.head[0](counter, x0.view(), t.view(), full, relu=True, dense_pixels=h * w)
        head = _core.Feature(self.n_feats, h, w, written=self.n_feats)
        self.head[1](counter, t.view(), head.view(), full, dense_pixels=h * w)
        return x0, head

    def layer_table(self) -> list[dict]:
        rows = []
        for conv in self.convs:
            spec = self.specs[conv.name]
            params = int(spec.weight.size)
            rows.append({"name": conv.name, "shape": list(spec.shape), "format": conv.format,
                         "kernel": conv.native.kernel, "params": params,
                         "nonzeros": conv.nonzeros,
                         "sparsity": 1.0 - conv.nonzeros / params if params else 0.0})
        return rows

    def dense_macs(self, h: int, w: int) -> int:
        """MACs of one dense-mode pass (all masks 1) at an h x w input."""
        total = 0
        for conv in self.convs:
            if ".spa_mask." in conv.name:
                continue
            total += h * w * conv.cin * conv.cout * conv.k * conv.k
        for m in self.modules:
            total += sum(c.weight.size for c in m.ca)
        return total
