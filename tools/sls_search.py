"""SLS: layer-wise N:M sparsity search (SLS paper sections 3.3-3.5), then fine-tuning with N fixed.

    python tools/sls_search.py artifacts/smsr_x2.pt -o artifacts/nm/sls_q4.pt --budget 0.25 \
        --m 32 --search-steps 150 --search-minutes 12 --finetune-steps 120 \
        --json artifacts/nm/sls_q4.json

Any sparsr model: the search and the fine-tuning run on the graph in PyTorch
(tools/torch_graph.py); --layers "core" (default, sparsity_common.core_layers), "all"
(every conv that can be N:M) or a regex over conv names.

* Eq. 1: every target weight is the sum of M tensors of 1:M sparsity; tensor i holds the
  i-th largest |w| of each group of M input channels (tools/nm_common.py ranks); the ranks
  are recomputed every --rerank-every steps, since the weights keep training.
* Eq. 2-3: the pruned weight is sum_i b_i W_i, b_i = [p_i > tau] forward, p_i backward
  (straight-through estimator), tau = 0.5.
* Eq. 4 (Priority-Ordered Pruning): p_1 = 1, p_i = prod_{n<i} k_n with k_n trainable,
  initialised to 1 and clamped to [0, 1] after every step, so p is non-increasing in i and
  a layer keeps N >= 1 of its magnitude-ranked tensors.
* Eq. 5-6: loss = L1 + lambda * sum_l C_l * sum_i b_i / M / sum_l C_l, C_l the layer's
  dense MACs (Eq. 5 C_original; with equal output sizes H*W cancels). Dividing by the
  constant sum_l C_l only rescales lambda, which keeps --lambda-init readable.
* Eq. 7: every --anneal-every steps, if the pruned MAC fraction grew by <= T (0.1) over
  that window, lambda *= alpha (1.1). The paper's window is K epochs of a 300-epoch search;
  ours is K steps of a search of a few hundred steps at most.
* Stop when the hard (forward) MAC fraction is <= the budget. Then the per-layer N is fitted
  to the budget exactly (units of the highest priority p are given back while they fit,
  or, if the search ran out of steps, the lowest-priority kept units are dropped; both
  counted in the report), the k are frozen, the masks are the N largest |w| of each group,
  and the network is fine-tuned with them fixed (tools/nm_common.py finetune).

The budget is a fraction of the target layers' dense MACs; below 1/M (every layer 1:M) it
cannot be reached and is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nm_common import (ALLOWED_M, GraphModule, NMError, PatchSampler, conv2d_names,  # noqa: E402
                       finetune, finetune_args, finetune_plan, l1_loss, load_checkpoint, log_line,
                       magnitude_ranks, nm_eligible, nm_mask, regex_layers,
                       write_nm_checkpoint)
from sparsity_common import core_layers  # noqa: E402

TAU, ALPHA, THRESHOLD = 0.5, 1.1, 0.1   # section 4.2 of the SLS paper


def check_budget(budget: float, m: int, costs: Mapping[str, float]) -> None:
    """Refuses budgets the search cannot reach: below every layer at 1:M, or >= everything."""
    if m not in ALLOWED_M:
        raise NMError(f"M={m} is not supported (M must be one of {', '.join(map(str, ALLOWED_M))})")
    total = sum(costs.values())
    floor = sum(c / m for c in costs.values()) / total
    if not budget < 1.0:
        raise NMError(f"budget {budget} of the MACs prunes nothing: give a fraction below 1")
    if budget < floor - 1e-12:
        raise NMError(f"budget {budget} is below the reachable minimum {floor:.6g} of the MACs "
                      f"(every layer 1:{m}; N >= 1 since p_1 = 1)")


def priorities_from(k: torch.Tensor) -> torch.Tensor:
    """Eq. 4: p_1 = 1, p_i = prod_{n<i} k_n (k has M-1 entries)."""
    return torch.cat([torch.ones(1, dtype=k.dtype), torch.cumprod(k, 0)])


def ste_gates(p: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Eq. 3: forward [p > tau], backward the identity on p."""
    hard = (p > tau).to(p.dtype)
    return hard + (p - p.detach())   # exactly 0/1 forward


def lambda_update(lam: float, pruned_change: float, alpha: float = ALPHA,
                  threshold: float = THRESHOLD) -> float:
    """Eq. 7: lambda *= alpha when the pruned MAC fraction changed by <= T in the window."""
    return lam * alpha if pruned_change <= threshold else lam


class SLSPruner:
    """Scores, gates and masked weights of the target convs of a model. targets: name ->
    the conv module (its .weight) or the weight parameter itself (tools/torch_graph.py)."""

    def __init__(self, model: nn.Module, targets: Mapping[str, nn.Module | nn.Parameter], m: int,
                 costs: Mapping[str, float] | None = None, tau: float = TAU):
        self.model, self.m, self.tau = model, m, tau
        path_of = {id(p): path for path, p in model.named_parameters()}
        self.convs = dict(targets)
        self.weights = {n: t if isinstance(t, torch.Tensor) else t.weight
                        for n, t in self.convs.items()}
        self.paths = {name: path_of[id(w)] for name, w in self.weights.items()}
        for name, w in self.weights.items():
            if not nm_eligible(w.shape, m):
                raise NMError(f"layer {name}: {w.shape[1]} input channels, fewer than M={m}")
        if costs is None:  # Eq. 5 C_original per output pixel: cout * cin * kh * kw
            costs = {n: float(w[0].numel() * w.shape[0]) for n, w in self.weights.items()}
        total = sum(costs[n] for n in self.convs)
        self.share = {n: costs[n] / total for n in self.convs}
        self.k = {n: torch.ones(m - 1, requires_grad=True) for n in self.convs}
        self.ranks: dict[str, torch.Tensor] = {}
        self.rerank()

    def rerank(self) -> None:
        """Eq. 1 re-done on the current weights."""
        self.ranks = {n: magnitude_ranks(w.detach(), self.m) for n, w in self.weights.items()}

    def priorities(self, name: str) -> torch.Tensor:
        return priorities_from(self.k[name])

    def clamp(self) -> None:
        with torch.no_grad():
            for k in self.k.values():
                k.clamp_(0.0, 1.0)

    def masked_weights(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """({param path: sum_i b_i W_i} (Eq. 2), the regulariser's MAC fraction (Eq. 5-6))."""
        subs, cost = {}, torch.zeros(())
        for name, w in self.weights.items():
            b = ste_gates(self.priorities(name), self.tau)
            subs[self.paths[name]] = w * b[self.ranks[name]]
            cost = cost + self.share[name] * b.sum() / self.m
        return subs, cost

    def kept(self) -> dict[str, int]:
        """N per layer: the units with p > tau (a prefix, by Eq. 4)."""
        with torch.no_grad():
            return {n: int((self.priorities(n) > self.tau).sum()) for n in self.convs}

    def fraction(self, kept: Mapping[str, int] | None = None) -> float:
        kept = self.kept() if kept is None else kept
        return float(sum(self.share[n] * kept[n] / self.m for n in self.convs))

    def fit_to_budget(self, budget: float) -> tuple[dict[str, int], int, int]:
        """(N per layer with cost <= budget, units dropped, units given back)."""
        kept = self.kept()
        with torch.no_grad():
            p = {n: self.priorities(n).tolist() for n in self.convs}
        order = list(self.convs)
        dropped = given = 0
        while self.fraction(kept) > budget + 1e-12:
            cands = [n for n in order if kept[n] > 1]
            if not cands:
                raise NMError(f"budget {budget} unreachable")
            n = min(cands, key=lambda n: (p[n][kept[n] - 1], -order.index(n)))
            kept[n] -= 1
            dropped += 1
        while True:
            room = budget - self.fraction(kept)
            cands = [n for n in order if kept[n] < self.m and self.share[n] / self.m <= room + 1e-12]
            if not cands:
                break
            n = max(cands, key=lambda n: (p[n][kept[n]], -order.index(n)))
            kept[n] += 1
            given += 1
        return kept, dropped, given


def search(pruner: SLSPruner, task_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
           budget: float, *, max_steps: int, minutes: float | None = None, lr_weights: float = 1e-4,
           lr_scores: float = 1e-2, lambda_init: float = 1e-2, alpha: float = ALPHA,
           threshold: float = THRESHOLD, anneal_every: int = 10, rerank_every: int = 25,
           log: Callable[[str], None] = log_line, log_every: int = 10) -> dict:
    """Trains weights and scores with L1 + lambda * MAC fraction until the hard MAC fraction
    is within the budget (or max_steps / minutes run out). task_loss(subs) runs the model
    with the substituted weights on one batch."""
    check_budget(budget, pruner.m, pruner.share)
    weights = [p for p in pruner.model.parameters() if p.requires_grad]
    opt_w = torch.optim.Adam(weights, lr=lr_weights)
    opt_k = torch.optim.Adam(list(pruner.k.values()), lr=lr_scores)
    lam = lambda_init
    start = time.perf_counter()
    window_start = pruner.fraction()
    history = [{"step": 0, "fraction": window_start, "lambda": lam}]
    reached, step = False, 0
    for step in range(1, max_steps + 1):
        if minutes is not None and time.perf_counter() - start > 60.0 * minutes:
            step -= 1
            break
        subs, cost = pruner.masked_weights()
        task = task_loss(subs)
        loss = task + lam * cost
        opt_w.zero_grad(set_to_none=True)
        opt_k.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        opt_k.step()
        pruner.clamp()
        fraction = pruner.fraction()
        if step % anneal_every == 0:
            # Eq. 7 on the pruned fraction 1 - C_pruned / C_original
            lam = lambda_update(lam, window_start - fraction, alpha, threshold)
            window_start = fraction
        if step % rerank_every == 0:
            pruner.rerank()
        if step % log_every == 0 or fraction <= budget:
            history.append({"step": step, "fraction": fraction, "lambda": lam,
                            "task": float(task.detach()), "seconds": time.perf_counter() - start})
            log(f"  search step {step}: MAC fraction {fraction:.4f} (budget {budget}), "
                f"L1 {float(task.detach()):.5f}, lambda {lam:.4g}, {time.perf_counter() - start:.0f}s")
        if fraction <= budget:
            reached = True
            break
    searched = pruner.kept()
    kept, dropped, given = pruner.fit_to_budget(budget)
    return {"reached": reached, "steps": step, "seconds": time.perf_counter() - start,
            "fraction_at_stop": pruner.fraction(searched), "searched_n": searched,
            "n": kept, "fraction": pruner.fraction(kept), "units_dropped_to_fit": dropped,
            "units_given_back_to_fit": given, "lambda_final": lam, "history": history,
            "k": {n: [round(v, 4) for v in pruner.k[n].detach().tolist()] for n in pruner.k}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="any sparsr checkpoint (e.g. artifacts/smsr_x2.pt)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--budget", type=float, required=True,
                   help="target MACs of the searched layers, as a fraction of their dense MACs")
    p.add_argument("--m", type=int, default=32)
    p.add_argument("--layers", default="core",
                   help='"core" (default: the core layers), "all" or a regex over conv names')
    p.add_argument("--search-steps", type=int, default=300)
    p.add_argument("--search-minutes", type=float, default=None)
    p.add_argument("--lr-scores", type=float, default=5e-3, help="Adam learning rate of the k")
    p.add_argument("--lambda-init", type=float, default=5e-3,
                   help="initial lambda of Eq. 6 (on L1 of 0..1 images and the MAC fraction)")
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--threshold", type=float, default=THRESHOLD)
    p.add_argument("--anneal-every", type=int, default=5, help="K of Eq. 7, in steps")
    p.add_argument("--rerank-every", type=int, default=25)
    p.add_argument("--json", help="the searched per-layer N and the search history")
    finetune_args(p)
    args = p.parse_args(argv)
    prog = "sls_search.py"
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        if Path(args.output).resolve() == Path(args.model).resolve():
            raise NMError("refusing to overwrite the input checkpoint")
        import sparsr
        model_desc, tensors, metadata = load_checkpoint(args.model)
        engine = sparsr.load(args.model)
        names = conv2d_names(engine)
        left_dense = []
        if args.layers == "core":   # core layers with fewer than M input channels stay dense
            layers = [n for n in core_layers(engine)
                      if nm_eligible(engine.conv_weight(n).shape, args.m)]
            left_dense = [n for n in core_layers(engine) if n not in layers]
        elif args.layers == "all":
            layers = [n for n in names if nm_eligible(engine.conv_weight(n).shape, args.m)]
        else:
            layers = regex_layers(names, args.layers)
        if not layers:
            raise NMError(f"--layers {args.layers!r} matches no convolution")
        net = GraphModule(model_desc, tensors)
        pruner = SLSPruner(net, {n: net.conv_weight(n) for n in layers}, args.m)
        check_budget(args.budget, args.m, pruner.share)
    except Exception as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2

    sampler = PatchSampler(args.train_data, scale=net.scale, patch=args.patch, seed=args.seed)

    def task_loss(subs):
        lr_batch, hr_batch = sampler.batch(args.batch)
        return l1_loss(functional_call(net, subs, (lr_batch,), {"masks": True, "image": True}),
                       hr_batch)

    print(f"SLS search: {len(layers)} layers, M={args.m}, budget {args.budget}"
          + (f"; left dense (fewer than M input channels): {', '.join(left_dense)}"
             if left_dense else ""))
    result = search(pruner, task_loss, args.budget, max_steps=args.search_steps,
                    minutes=args.search_minutes, lr_weights=args.lr, lr_scores=args.lr_scores,
                    lambda_init=args.lambda_init, alpha=args.alpha, threshold=args.threshold,
                    anneal_every=args.anneal_every, rerank_every=args.rerank_every)
    layer_n = result["n"]
    print(f"search: {'reached' if result['reached'] else 'did NOT reach'} the budget after "
          f"{result['steps']} steps ({result['seconds']:.0f} s); fitted MAC fraction "
          f"{result['fraction']:.4f} ({result['units_dropped_to_fit']} units dropped, "
          f"{result['units_given_back_to_fit']} given back)")
    print("N per layer: " + " ".join(str(layer_n[n]) for n in layers))

    tensors = net.export_tensors(tensors)
    masks = {n: nm_mask(tensors[n + ".weight"], layer_n[n], args.m) for n in layers}
    for n in layers:
        tensors[n + ".weight"] = tensors[n + ".weight"] * masks[n].numpy()
    report = {"tool": "tools/sls_search.py", "base": Path(args.model).name, "m": args.m,
              "budget": args.budget, "layers": layer_n, "left_dense": left_dense,
              "search": result,
              "hyper": {k: getattr(args, k) for k in ("lr_scores", "lambda_init", "alpha",
                                                      "threshold", "anneal_every", "rerank_every",
                                                      "lr", "batch", "patch", "seed")},
              "train_data": f"{args.train_data} HR, LR by PIL bicubic x{net.scale}"}
    steps, minutes = finetune_plan(args)
    if steps:
        net = GraphModule(model_desc, tensors)
        report["finetune"] = finetune(net, masks, sampler, steps=steps, minutes=minutes,
                                      lr=args.lr, batch=args.batch)
        tensors = net.export_tensors(tensors)
    summary = {k: v for k, v in result.items() if k not in ("history", "k")}
    metadata = dict(metadata, tool="tools/sls_search.py",
                    nm=dict({k: v for k, v in report.items() if k != "search"}, search=summary))
    write_nm_checkpoint(args.output, model_desc, tensors, layer_n, args.m, metadata)
    print(f"wrote {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
