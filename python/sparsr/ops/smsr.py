"""smsr_module: one sparse mask module of SMSR, run on its masks.

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

In "dense" run mode every mask is 1: the plain dense network.

Node: inputs [x], outputs [y]; params: the module's tensors by their names
below the module (``spa_mask.0.weight``, ``body.ch_mask``,
``body.body.<i>.weight``, ``body.collect.weight``, ``ca.conv_du.0.weight``,
...); attrs: ``n_layers``, ``input_skip`` (default true) and ``dense_planes``
(the size of the feature holding every layer's dense channels: the network's
largest, so that the buffer pool hands one buffer from module to module).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .. import _core
from ..errors import CheckpointError
from . import BuildContext, Op, RowMap, register
from .conv import MacCounter, PackedConv, layer_format, layer_precision, layer_quant


@dataclass
class ConvSpec:
    """One convolution of a module, as stored in the checkpoint."""
    name: str
    weight: np.ndarray              # (cout, cin, k, k), float32, zeros included
    bias: np.ndarray | None
    format: str = "dense"
    options: dict = field(default_factory=dict)
    precision: str = "f32"
    quant: tuple[float, int] | None = None   # int8 input (scale, zero point)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only: no overflow for any logit.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def channel_masks(ch_mask: np.ndarray) -> np.ndarray:
    """(1, C, L, 2) learned logits -> (L, C) bool, True where a channel is dense."""
    if ch_mask.ndim != 4 or ch_mask.shape[0] != 1 or ch_mask.shape[3] != 2:
        raise CheckpointError(f"ch_mask has shape {ch_mask.shape}, expected (1, C, L, 2)")
    logits = ch_mask[0].astype(np.float32)          # (C, L, 2)
    if not np.isfinite(logits).all():
        # a softmax over infinite logits has no value (inf - inf)
        raise CheckpointError("ch_mask holds NaN or infinite logits")
    e = np.exp(logits - logits.max(axis=2, keepdims=True))
    soft = e / e.sum(axis=2, keepdims=True)
    dense = np.rint(soft[:, :, 0]) == 1.0           # softmax -> round, column 0 = dense
    return dense.T.copy()


def module_shapes(n_feats: int, n_layers: int) -> dict[str, tuple]:
    """Every tensor of one module (names below the module) and its shape."""
    C, q = n_feats, n_feats // 4
    shapes = {
        "spa_mask.0.weight": (q, C, 3, 3), "spa_mask.0.bias": (q,),
        "spa_mask.3.weight": (q, q, 3, 3), "spa_mask.3.bias": (q,),
        "spa_mask.5.weight": (q, 2, 3, 3), "spa_mask.5.bias": (2,),
        "body.ch_mask": (1, C, n_layers, 2),
        "body.collect.weight": (C, C * n_layers, 1, 1), "body.collect.bias": (C,),
        "ca.conv_du.0.weight": (C // 16, C, 1, 1), "ca.conv_du.0.bias": (C // 16,),
        "ca.conv_du.2.weight": (C, C // 16, 1, 1), "ca.conv_du.2.bias": (C,),
    }
    for i in range(n_layers):
        shapes[f"body.body.{i}.weight"] = (C, C, 3, 3)
    return shapes


def _conv(spec: ConvSpec, isa: str | None, weight: np.ndarray | None = None,
          with_bias: bool = True, dense_cin: int | None = None) -> PackedConv:
    return PackedConv(spec.name, spec.weight if weight is None else weight,
                      spec.bias if with_bias else None, isa, spec.format, spec.options, dense_cin,
                      precision=spec.precision, quant=spec.quant)


class SmsrModule:
    """One SMM: spatial mask branch, four sparse mask convs, collect, attention."""

    def __init__(self, prefix: str, specs: dict[str, ConvSpec], ch_mask: np.ndarray,
                 isa: str | None, input_skip: bool = True):
        self.prefix = prefix
        # Input skip: at unimportant pixels dense outputs read only dense inputs
        # (sparse inputs are zero there). Without it they also multiply the
        # sparse inputs, as zeros: the same image, more MACs (SparSMSR "a").
        self.input_skip = input_skip
        self.mask_convs = [_conv(specs[f"{prefix}.spa_mask.{i}"], isa) for i in (0, 3)]
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
            self.layers.append(_conv(spec, isa, w if natural else stored))
            self.natural_input.append(natural)
            skip = None
            if natural and i > 0 and input_skip:
                skip = _conv(replace(spec, format="sparse", options={}), isa,
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
        self.collect_plain = _conv(collect, isa)
        self.collect_natural = collect.format == "nm"
        cols = [collect.weight[:, i * channels:(i + 1) * channels] for i in range(n_layers)]
        stored = [w[:, self.perm[i]] for i, w in enumerate(cols)]
        ordered = cols if self.collect_natural else stored
        self.collect_pairs = [list(range(i, min(i + 2, n_layers))) for i in range(0, n_layers, 2)]
        self.collect_convs = [_conv(collect, isa, np.concatenate([ordered[i] for i in pair], 1),
                                    g == 0)
                              for g, pair in enumerate(self.collect_pairs)]
        if input_skip:
            # N:M groups lose their shape on the dense channels alone: those
            # run as zero-skip convs (as the N:M layers above).
            spec = replace(collect, format="sparse", options={}) if self.collect_natural \
                else collect
            prefixes = [w[:, :self.n_dense[i]] for i, w in enumerate(stored)]
            self.unimportant_collect = _conv(spec, isa, np.concatenate(prefixes, 1),
                                             dense_cin=channels * n_layers)
        else:
            # Without input skip every channel is read, the sparse ones as zeros.
            self.unimportant_collect = _conv(collect, isa, np.concatenate(ordered, 1))
        ca = [specs.get(f"{prefix}.ca.conv_du.{i}") for i in (0, 2)]
        self.ca = ca if None not in ca else None
        self.channels = channels
        self.dense_planes = sum(self.n_dense)   # the network sets one size for all modules

    # -- spatial mask -------------------------------------------------------

    def spatial_mask(self, counter: MacCounter, x_view, h: int, w: int) -> np.ndarray:
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

    def pixel_sets(self, counter: MacCounter, x, mode: str):
        """(mask, important, unimportant) for the module input x."""
        h, w = x.height, x.width
        if mode == "dense":
            mask = np.ones((h, w), dtype=bool)
            important = _core.PixelSet.full(h, w)
        else:
            mask = self.spatial_mask(counter, x, h, w)
            important = _core.PixelSet.from_mask(mask.view(np.uint8), h, w)
        return mask, important, important.complement()

    def layer_inputs(self, stored, layer_before: int, natural: bool, zero):
        """(input at important pixels, input at unimportant pixels, channels
        read there) for a conv reading `stored`, layer layer_before's output.

        Storage order puts dense channels first: reading a prefix skips the
        sparse ones, which are zero at unimportant pixels (input skip). An
        input in the original order, or a network without input skip,
        reads every channel, the sparse ones replaced by a zero plane."""
        c = self.channels
        if layer_before < 0:
            return stored, stored, c
        order = self.perm[layer_before]
        nd = self.n_dense[layer_before]
        src = stored.select(np.argsort(order).tolist()) if natural else stored
        if self.input_skip and not natural:
            return src, src, nd
        return src, self._sparse_as_zeros(stored, layer_before, natural, zero), c

    def run_layer(self, counter: MacCounter, i: int, src, dst, important, unimportant,
                  zero) -> None:
        """Layer i from src (layer i - 1's output in storage order, or the
        module input) into dst (its outputs in storage order; the sparse ones
        zero and left so at unimportant pixels)."""
        nd = self.n_dense[i]
        at_i, at_u, cin_u = self.layer_inputs(src, i - 1, self.natural_input[i], zero)
        if self.unimportant_layers[i] is not None:
            self.unimportant_layers[i](counter, src, dst, unimportant, relu=True, cout=nd,
                                       dense_pixels=unimportant.count)
        else:
            self.layers[i](counter, at_u, dst, unimportant, relu=True, cin=cin_u, cout=nd,
                           dense_pixels=unimportant.count)
        self.layers[i](counter, at_i, dst, important, relu=True, dense_pixels=important.count)

    def run_collect(self, counter: MacCounter, g: int, outputs, y, important, zero,
                    residual=None) -> None:
        """The collect of layer group g (collect_pairs[g], whose outputs are
        given) at important pixels into y, plus residual."""
        reads = [self.layer_inputs(v, j, self.collect_natural, zero)[0]
                 for v, j in zip(outputs, self.collect_pairs[g])]
        self.collect_convs[g](counter, _core.Channels.cat(reads), y, important,
                              residual=residual, dense_pixels=important.count)

    def run_unimportant_collect(self, counter: MacCounter, dense_views, y, unimportant,
                                zero) -> None:
        """The collect at unimportant pixels into y, from every layer's dense
        channels (dense_views[i]: layer i's, None when it has none)."""
        if self.input_skip:
            views = _core.Channels.cat([d for d in dense_views if d is not None])
        else:
            views = _core.Channels.cat([self._sparse_as_zeros(d, i, self.collect_natural, zero)
                                        for i, d in enumerate(dense_views)])
        # No dense channel at all: the bias alone (a conv reading 0 inputs).
        self.unimportant_collect(counter, views if len(views) else zero.view([0]), y,
                                 unimportant, cin=len(views), dense_pixels=unimportant.count)

    def attend(self, counter: MacCounter, y, x) -> None:
        """y = y * attention(y) + x, in place."""
        means = np.asarray(_core.channel_means(y), dtype=np.float32)
        w1, w2 = self.ca
        z = np.maximum(w1.weight[:, :, 0, 0] @ means + w1.bias, 0.0)
        s = _sigmoid(w2.weight[:, :, 0, 0] @ z + w2.bias).astype(np.float32)
        counter.add(f"{self.prefix}.ca", w1.weight.size + w2.weight.size,
                    w1.weight.size + w2.weight.size)
        _core.scale_add(y, s.tolist(), x, y)

    def forward(self, counter: MacCounter, x, mode: str):
        """x: the module input (Channels); returns (output Channels, spatial mask)."""
        h, w = x.height, x.width
        c = self.channels
        # written=...: planes every interior pixel of which is written below
        # need no zeroing (the sparse channels of a layer's output do).
        y = _core.Feature(c, h, w, written=c)
        mask, important, unimportant = self.pixel_sets(counter, x, mode)
        zero = _core.Feature(1, h, w)

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
        src = x
        pending, sparse = [], None
        for i in range(self.n_layers):
            nd = self.n_dense[i]
            parts = [dense_views[i]] if nd else []
            if nd < c:
                # Planes [0, nd) stay unused (the dense channels are in
                # dense_all); `written` spares their interiors the zeroing.
                sparse = _core.Feature(c, h, w, written=nd)
                parts.append(sparse.view(list(range(nd, c))))
            dst = _core.Channels.cat(parts)
            # Dense outputs at unimportant pixels; sparse outputs stay zero
            # there (`sparse` is fresh).
            self.run_layer(counter, i, src, dst, important, unimportant, zero)
            # Views hold their features: drop the previous layer's before the
            # next allocation, or three layers' features would be alive at once.
            pending.append(dst)
            src = dst
            g = i // 2
            if i == self.collect_pairs[g][-1]:
                self.run_collect(counter, g, pending, y.view(), important, zero,
                                 residual=y.view() if g else None)
                pending = []
        del src, dst, parts, pending, sparse
        self.run_unimportant_collect(counter, dense_views, y.view(), unimportant, zero)
        if self.ca is not None:
            # Channel attention and the residual connection of the module.
            self.attend(counter, y.view(), x)
        return y.view(), mask

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


@register
class SmsrModuleOp(Op):
    name = "smsr_module"

    def __init__(self, node, ctx: BuildContext):
        super().__init__(node, ctx)
        self.n_layers = self.attr("n_layers", 4, int, 1, 64)
        input_skip = self.attr("input_skip", True, bool)
        # attention false: the module gives its features before the channel
        # attention and the residual add, which the graph then does with its
        # own ops (a global mean: band execution ends a pass there).
        self.attention = self.attr("attention", True, bool)
        ch_mask = self.tensor(ctx, "body.ch_mask")
        if ch_mask.ndim != 4:
            self.fail(f"body.ch_mask must be (1, C, n_layers, 2), got {ch_mask.shape}")
        self.channels = int(ch_mask.shape[1])
        if self.channels < 16 or self.channels % 16:
            self.fail(f"{self.channels} features: SMSR needs a multiple of 16")
        self.shapes = module_shapes(self.channels, self.n_layers)
        if not self.attention:
            self.shapes = {k: v for k, v in self.shapes.items() if not k.startswith("ca.")}
        specs = {}
        prefix = node.name
        for role, shape in self.shapes.items():
            t = self.tensor(ctx, role, shape)
            if role.endswith(".weight") and len(shape) == 4:
                conv = role[:-len(".weight")]
                bias_role = conv + ".bias"
                bias = self.tensor(ctx, bias_role, self.shapes[bias_role]) \
                    if bias_role in self.shapes else None
                layer = node.params[role][:-len(".weight")]
                fmt, options = layer_format(ctx, layer)
                specs[f"{prefix}.{conv}"] = ConvSpec(layer, t, bias, fmt, options,
                                                     layer_precision(ctx, layer),
                                                     layer_quant(ctx, layer))
        self.module = SmsrModule(prefix, specs, ch_mask, ctx.isa, input_skip)
        self.module.dense_planes = max(self.module.dense_planes,
                                       self.attr("dense_planes", 0, int, 0, 1 << 16))
        self.specs = specs

    def infer(self, shapes):
        c, h, w = shapes[0]
        if c != self.channels:
            self.fail(f"input has {c} channels, the module {self.channels}", ValueError)
        return [shapes[0]]

    def run(self, rt, inputs):
        y, mask = self.module.forward(rt.counter, inputs[0], rt.mode)
        rt.masks.append(mask)
        return [y]

    def row_map(self):
        # The mask at row y reads input rows y - 4 .. y + 5 (3x3 conv, 2x2
        # average pool, 3x3 conv at half size, 3x3 stride-2 transposed conv
        # back); layer i's output at row y reads layer i - 1 at y +- 1 and the
        # mask at y. The last layer (and the collect) at row y so reads the
        # masks within n_layers - 1 rows and the input within n_layers + 4.
        # The pool wants windows at even rows. With the attention inside, a
        # row depends on the whole image.
        if self.attention:
            return None
        return RowMap(halo=self.n_layers + 4, align=2)

    def band_steps(self, x: str, y: str, shape):
        """The module as steps of band execution (smsr_steps.py)."""
        from .smsr_steps import band_steps
        return band_steps(self.module, x, y, shape)

    def workspace(self, shapes):
        # The dense channels of every layer, two layers' sparse channels, the
        # mask branch (a quarter of the channels) and its logits.
        from ..executor import feature_bytes
        _, h, w = shapes[0]
        planes = self.module.dense_planes + 2 * self.channels + self.channels // 4 + 2
        return feature_bytes(planes, h, w)

    def macs(self, shapes):
        _, h, w = shapes[0]
        total = 0
        for conv in self.module.layers + [self.module.collect_plain]:
            total += h * w * conv.cin * conv.cout * conv.k * conv.k
        return total + (sum(c.weight.size for c in self.module.ca) if self.module.ca else 0)

    def packed_convs(self):
        m = self.module
        return [c for c in m.mask_convs + m.layers + m.unimportant_layers + [m.collect_plain]
                + m.collect_convs + [m.unimportant_collect] if c is not None]

    def convs(self):
        m = self.module
        return [c.row() for c in m.mask_convs + m.layers + [m.collect_plain]]
