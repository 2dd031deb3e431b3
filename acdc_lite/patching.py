"""One-pass edge patching: evaluate a model with any set of edges kept, and the mask gradient.

Notation: S senders, R receivers (see `ModelGraph`), D_s = out_s - ablated_s, the difference between
sender s's output in the running pass and its ablated value. With `kept` [S, R] in [0, 1],

    input_r = resid_r - sum_s (1 - kept[s, r]) * D_s

so kept = 1 everywhere is the clean model and kept = 0 everywhere feeds every receiver only ablated
senders (the fully ablated model). One forward pass evaluates any edge set; a leading candidate
dimension [C, S, R] evaluates C edge sets in one batched pass.

Because input_r depends on kept[s, r] only through that sum (D_s is computed upstream of r),
d metric / d kept[s, r] = <D_s, d metric / d input_r>: one backward pass to the receiver inputs
gives the gradient for every edge (attribution patching) without differentiating through the mask.

Grouped-query attention: a model's k and v inputs are shared by the query heads of a group, so a
group's k (v) input takes the mean of its heads' corrections; in a binary mask the heads of a group
must agree on their k/v edges (`ModelGraph.tie`; every search method and measure keeps them tied),
and fractional masks, as in gradients, use the mean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.choices import Ablation
from acdc_lite.graph import ModelGraph
from acdc_lite.metrics import PositionMetric
from acdc_lite.models import shared_qkv_input
from acdc_lite.padding import forward
from acdc_lite.shape import model_info

# metric(logits [b, pos, vocab], example indices [b]) -> per-example values [b]; higher = more clean behaviour.
# A PositionMetric (acdc_lite.metrics) declares the positions it reads: passes then unembed only those.
Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _group_view(x: torch.Tensor, size: int) -> torch.Tensor:
    """Hook output [b, p, d] or [b, p, n, d] -> [b, p, n, d]."""
    return x if x.dim() == 4 else x.view(*x.shape[:2], size, x.shape[-1])


@torch.no_grad()
def sender_outputs(model: nn.Module, graph: ModelGraph, tokens: torch.Tensor, batch_size: int = 64,
                   attention_mask: torch.Tensor | None = None,
                   on_logits: Callable[[torch.Tensor, slice], None] | None = None,
                   positions: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Each sender group's output on `tokens` [b, p] (padded positions hidden by `attention_mask` [b, p]):
    a list over `graph.sender_groups` of [b, p, n, d]. `on_logits(logits [b, p, vocab], rows)` sees each
    chunk's logits (a metric of the run costs no extra pass); with `positions` [b, T] only those positions' logits
    are computed, and it sees [b, T, vocab]."""
    outs: list[torch.Tensor] = []  # filled chunk by chunk (no second copy from concatenating chunks)
    for start in range(0, len(tokens), batch_size):
        store: dict[int, torch.Tensor] = {}

        def make(i, size, store=store):
            def hook(x, hook):
                store[i] = _group_view(x, size)
            return hook

        fwd = [(g.hook, make(i, g.size)) for i, g in enumerate(graph.sender_groups)]
        rows = slice(start, start + batch_size)
        mask = None if attention_mask is None else attention_mask[rows]
        # without a metric to feed, one position's logits is all the run needs
        at = positions[rows] if positions is not None else None if on_logits is not None else _ONE_POSITION
        with shared_qkv_input(model), model.hooks(fwd_hooks=fwd):  # no head input is patched here
            logits = forward(model, tokens[rows], mask, positions=expand_rows(at, len(tokens[rows])))
        if on_logits is not None:
            on_logits(logits, slice(start, start + len(logits)))
        del logits
        if len(tokens) <= batch_size:  # one chunk: its outputs are the result (no copy)
            return [store[i] for i in range(len(graph.sender_groups))]
        if not outs:
            outs = [store[i].new_empty(len(tokens), *store[i].shape[1:]) for i in range(len(graph.sender_groups))]
        for i, out in enumerate(outs):
            out[start:start + batch_size] = store[i]
    return outs


def ablated_outputs(model: nn.Module, graph: ModelGraph, corrupt_tokens: torch.Tensor | None,
                    ablation: Ablation | str = Ablation.RESAMPLE, batch_size: int = 64,
                    attention_mask: torch.Tensor | None = None,
                    on_logits: Callable[[torch.Tensor, slice], None] | None = None,
                    positions: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Ablated value of every sender group: [b, p, n, d] (resample), [1, p, n, d] (mean-positional),
    [1, 1, n, d] (mean, zero). Means are over the corrupted prompts' real positions (`attention_mask` [b, p],
    True at real tokens; padded positions never enter a mean). Mean-positional ablation refuses prompts of
    different lengths: a position index means a different token in each. `on_logits`, `positions`: see
    `sender_outputs` (called when the corrupted prompts are run)."""
    ablation = Ablation(ablation)
    if attention_mask is not None and ablation is Ablation.MEAN_POSITIONAL and not bool(attention_mask.all()):
        lengths = attention_mask.sum(1)
        raise ValueError(f"mean-positional ablation needs prompts of one length, and these have {int(lengths.min())} to "
                         f"{int(lengths.max())} tokens; use --ablation mean (over real positions) or resample, or give "
                         "prompts of one length")
    if ablation is Ablation.ZERO:
        info = model_info(model)
        p = next(model.parameters())
        return [torch.zeros(1, 1, g.size, info.d_model, device=p.device, dtype=p.dtype) for g in graph.sender_groups]
    if corrupt_tokens is None:
        raise ValueError(f"{ablation.value} ablation needs corrupted prompts")
    outs = sender_outputs(model, graph, corrupt_tokens, batch_size, attention_mask, on_logits, positions)
    if ablation is Ablation.MEAN:
        if attention_mask is None:
            return [o.mean(dim=(0, 1), keepdim=True) for o in outs]
        real = attention_mask.to(outs[0].device)[:, :, None, None]  # [b, p, 1, 1]
        n_real = real.sum()
        return [torch.where(real, o, 0).sum(dim=(0, 1), keepdim=True) / n_real for o in outs]
    if ablation is Ablation.MEAN_POSITIONAL:
        return [o.mean(dim=0, keepdim=True) for o in outs]
    return outs


_ONE_POSITION = torch.zeros(1, 1, dtype=torch.long)  # position 0 of every row: a pass whose logits nobody reads


def expand_rows(positions: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """Positions [1 | rows, T] as [rows, T] (a view), None as None."""
    return positions if positions is None or len(positions) == rows else positions.expand(rows, -1)


def metric_positions(metric: Metric, idx: slice) -> torch.Tensor | None:
    """[b, T]: the positions `metric` reads for examples `idx`, or None (it reads every position)."""
    return metric.positions_of(torch.arange(idx.start, idx.stop)) if isinstance(metric, PositionMetric) else None


@dataclass
class _Correction:
    """What to subtract from the inputs of one hook's receiver columns: `base` [C*b, p, 1, d] (or None) from
    every column, plus `values` [C*b, p, k, d] from the columns `columns` [k] (sorted)."""

    base: torch.Tensor | None
    columns: torch.Tensor
    values: torch.Tensor

    def subtract(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """x [C*b, p, n, d], the input of columns lo..hi, corrected. With grouped-query attention n is the
        number of k/v groups: a group's input moves by the mean of its heads' corrections."""
        group = (hi - lo) // x.shape[2]
        a, b = torch.searchsorted(self.columns, torch.tensor([lo, hi])).tolist()
        out = x if self.base is None else x - self.base
        if a == b:
            return out
        values, index = self.values[:, :, a:b], (self.columns[a:b] - lo) // group
        if group == 1 and b - a == x.shape[2]:
            return out - values
        if out is x:
            return x.index_add(2, index, values, alpha=-1 / group)
        return out.index_add_(2, index, values, alpha=-1 / group)


@dataclass
class _Pass:
    """State of one patched forward pass over a chunk of examples (C candidates x b examples)."""

    removed: torch.Tensor  # [C, S, R] float: 1 - kept, zero outside valid edges
    n_candidates: int
    deltas: torch.Tensor | None = None  # [C, S, b*p, d]: D_s of every sender, filled as senders fire
    collect: bool = False  # keep receiver inputs for a backward pass
    grad_through_deltas: bool = False  # a backward pass goes through D (some edge is removed: corrections read D)
    receiver_inputs: dict[int, torch.Tensor] | None = None  # first receiver column -> patched input
    resid_pre: dict[int, torch.Tensor] | None = None  # layer -> residual entering it (for suffix runs)
    ablated: list[torch.Tensor] | None = None  # per group, this chunk's rows: [b|1, p|1, n, d]
    input_alpha: float | None = None  # run on ablated + alpha * (clean - ablated) input (integrated gradients)
    inputs_of: frozenset[int] = frozenset()  # first receiver columns whose patched inputs are kept (no gradient)


GATHER_BELOW = 0.75  # a correction copies out the senders it needs when they are fewer than this share of all
DEFAULT_MEMORY_MB = 384.0  # EdgePatcher's budget for one chunk's activations


def chunk_rows(n_senders: int, d_model: int, n_heads: int, n_layers: int, d_vocab: int, seq_len: int, batch_size: int,
               memory_mb: float = DEFAULT_MEMORY_MB) -> tuple[int, int]:
    """(eval_rows, grad_rows): prompts per chunk of a patched pass (per candidate mask; callers also cap it at the
    batch size) and of a gradient pass (at most `batch_size`), so a chunk's activations stay within `memory_mb`. A
    patched pass holds every sender's difference and a few per-head activations per token; a gradient pass keeps
    the per-head q/k/v inputs of every layer and what their norms and projections need for the backward pass to the
    inputs (weights are frozen there: nothing is kept for their gradients)."""
    per_prompt = seq_len * 4 / 2**20  # MB per prompt per float held per token
    eval_floats = n_senders * d_model + 6 * n_heads * d_model + 2 * d_vocab
    grad_floats = n_senders * d_model + n_layers * (5 * n_heads + 12) * d_model + 3 * d_vocab
    return max(1, int(memory_mb / (eval_floats * per_prompt))), max(1, min(batch_size, int(memory_mb / (grad_floats * per_prompt))))


class EdgePatcher:
    """Evaluate `model` on `clean_tokens` with any edge set kept and the rest ablated.

    clean_tokens: [B, P]; ablated: from `ablated_outputs` (per-example tensors must have B rows).
    attention_mask: [B, P], True at real tokens (None: no padding). Every pass runs with it, and mask
    gradients leave padded positions out.
    """

    def __init__(self, model: nn.Module, graph: ModelGraph, clean_tokens: torch.Tensor,
                 ablated: list[torch.Tensor], batch_size: int = 32, attention_mask: torch.Tensor | None = None,
                 memory_mb: float = DEFAULT_MEMORY_MB):
        if len(ablated) != len(graph.sender_groups):
            raise ValueError("ablated outputs do not match the graph's sender groups")
        for a in ablated:
            if a.shape[0] not in (1, len(clean_tokens)):
                raise ValueError(f"ablated outputs have {a.shape[0]} examples but there are {len(clean_tokens)} clean prompts")
        if attention_mask is not None and attention_mask.shape != clean_tokens.shape:
            raise ValueError(f"attention mask {tuple(attention_mask.shape)} does not match the prompts {tuple(clean_tokens.shape)}")
        self.model, self.graph, self.tokens, self.ablated = model, graph, clean_tokens, ablated
        self.attention_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        self.batch_size = batch_size
        info = model_info(model)
        self.memory_mb = memory_mb
        self.eval_rows, self.grad_rows = chunk_rows(graph.n_senders, info.d_model, info.n_heads, info.n_layers, info.d_vocab,
                                                    clean_tokens.shape[1], batch_size, memory_mb)
        # prompts whose gradient-pass activations fit the budget at once (the batch size aside)
        self.grad_rows_in_budget = chunk_rows(graph.n_senders, info.d_model, info.n_heads, info.n_layers, info.d_vocab,
                                              clean_tokens.shape[1], len(clean_tokens), memory_mb)[1]
        if graph.kv_group != info.n_heads // info.n_kv_heads:
            raise ValueError(f"the graph has {graph.n_kv_heads} k/v heads but the model {info.n_kv_heads}; "
                             "build it with ModelGraph.from_model")
        self.kv_group = graph.kv_group
        self.supports_start = info.supports_start_at_layer
        self.forward_passes = 0.0  # in units of one plain forward over all examples
        self.backward_passes = 0.0

    def subset(self, rows: torch.Tensor) -> EdgePatcher:
        """The same patcher on examples `rows` [m] only (its pass counters start at zero, in its own units)."""
        mask = None if self.attention_mask is None else self.attention_mask[rows]
        ablated = [a if a.shape[0] == 1 else a[rows] for a in self.ablated]
        return EdgePatcher(self.model, self.graph, self.tokens[rows], ablated, self.batch_size, mask, self.memory_mb)

    # ---- masks ----------------------------------------------------------------------------
    def passes(self) -> dict[str, float]:
        """The passes spent so far: {"forward_passes", "backward_passes"} (units of one pass over all examples)."""
        return {"forward_passes": self.forward_passes, "backward_passes": self.backward_passes}

    def removed_weights(self, kept: torch.Tensor) -> torch.Tensor:
        """kept [S, R] or [C, S, R] (bool or float) -> removed [C, S, R] float, zero outside valid edges."""
        if kept.shape[-2:] != self.graph.valid.shape:
            raise ValueError(f"mask shape {tuple(kept.shape)} does not match the graph's {tuple(self.graph.valid.shape)}")
        p = next(self.model.parameters())
        kept = kept.to(device=p.device, dtype=p.dtype)
        removed = (1 - kept) * self.graph.valid.to(p.device)
        removed = removed if removed.dim() == 3 else removed[None]
        if self.kv_group > 1 and bool(((removed == 0) | (removed == 1)).all()):
            self._check_kv_groups(removed)  # a binary circuit must not half-patch a shared k/v input
        return removed

    def _check_kv_groups(self, removed: torch.Tensor) -> None:
        g, h = self.graph, self.graph.n_heads
        for layer in range(g.n_layers):
            for port_offset in (h, 2 * h):  # k and v columns
                start = layer * g.receivers_per_layer + port_offset
                cols = removed[..., start:start + h].unflatten(-1, (h // self.kv_group, self.kv_group))
                if not torch.equal(cols, cols[..., :1].expand_as(cols)):
                    raise ValueError(f"layer {layer}: heads sharing a k/v group (size {self.kv_group}) need equal k/v "
                                     "masks; close the mask with graph.tie(mask)")

    # ---- hooks ----------------------------------------------------------------------------
    def _correction(self, st: _Pass, cols: slice, n_senders: int, b: int, p: int, d: int) -> _Correction | None:
        """sum_s removed[s, r] * D_s for the receiver columns `cols` of one hook, or None if nothing is removed.

        All of the first `n_senders` senders feed every receiver in `cols`, so the sum also equals
        sum_s D_s - sum_s (1 - removed[s, r]) * D_s. Whichever form has fewer senders with a non-zero
        weight is used, and only those receivers' columns (and, when they are few, those senders' rows of D) are touched:
        a circuit keeps few edges and an ACDC step removes few, so both cost far less than the dense product.
        """
        w = st.removed[:, :n_senders, cols]  # [C, S', n_cols]
        removing = w.any(dim=2).any(dim=0)  # [S'] senders with a removed edge here, in any candidate
        keeping = (w < 1).any(dim=2).any(dim=0)
        n_removing, n_keeping = int(removing.sum()), int(keeping.sum())
        if n_removing == 0:
            return None
        c = w.shape[0]
        deltas = st.deltas[:, :n_senders].reshape(c, n_senders, -1)  # [C, S', b*p*d], a view
        base = None
        if n_keeping < n_removing:
            base = deltas.sum(dim=1).view(c * b, p, 1, d)
            w, rows = -(1 - w), keeping  # the correction is base minus the kept senders' sum
        else:
            rows = removing
        columns = w.any(dim=1).any(dim=0).nonzero()[:, 0]  # [k] receivers with a non-zero weight
        if int(rows.sum()) < GATHER_BELOW * n_senders:  # copying most rows of D costs more than multiplying zeros
            index = rows.nonzero()[:, 0]
            w, deltas = w[:, index], deltas[:, index]
        values = torch.bmm(w[:, :, columns].transpose(1, 2), deltas)  # [C, k, b*p*d]
        values = values.view(c, -1, b, p, d).permute(0, 2, 3, 1, 4).reshape(c * b, p, -1, d)  # a view when C = 1
        return _Correction(base, columns, values)

    def _hooks(self, st: _Pass, start_layer: int) -> list:
        g = self.graph
        fwd = []
        h = g.n_heads
        if st.collect and start_layer == 0:  # weights are frozen in a gradient pass: the graph starts at the input
            fwd.append((hooks.INPUT, lambda x, hook: x.detach().requires_grad_(True)))
        if st.input_alpha is not None and start_layer == 0:
            def interpolate(x, hook):
                a = st.ablated[0].view(*st.ablated[0].shape[:2], -1)
                return a + st.input_alpha * (x - a)
            fwd.append((hooks.INPUT, interpolate))

        def sender_hook(i: int, group):
            def hook(x, hook):
                x4 = _group_view(x, group.size)
                cb, p, n, d = x4.shape
                c, b = st.n_candidates, cb // st.n_candidates
                if st.deltas is None:  # every slot is written by its sender before any receiver reads it
                    st.deltas = x4.new_empty(c, g.n_senders, b * p, d)
                slot = st.deltas[:, group.start:group.start + n]  # [C, n, b*p, d]
                if st.grad_through_deltas and torch.is_grad_enabled() and x4.requires_grad:  # the gradient flows through D
                    slot[:] = (x4.view(c, b, p, n, d) - st.ablated[i]).view(c, -1, n, d).transpose(1, 2)
                else:  # written in place, in the slot's layout
                    torch.sub(x4.detach().view(c, b, p, n, d).permute(0, 3, 1, 2, 4),
                              st.ablated[i].permute(2, 0, 1, 3)[None], out=slot.view(c, n, b, p, d))
                return x
            return hook

        for i, group in enumerate(g.sender_groups):
            if max(group.layer, 0) >= start_layer:  # the input (layer -1) fires in block 0
                fwd.append((group.hook, sender_hook(i, group)))

        def patched(x: torch.Tensor, corr: _Correction | None, col: int, lo: int, hi: int) -> torch.Tensor:
            if corr is None:
                out = x
            elif x.dim() == 3:  # a single receiver (MLP, logits): [C*b, p, d]
                out = corr.subtract(x[:, :, None], lo, hi)[:, :, 0]
            else:
                out = corr.subtract(x, lo, hi)
            if st.collect:
                # a receiver's own tensor (a view: no copy), so its gradient is only the path through this receiver
                out = out.view_as(out) if out is x else out
                st.receiver_inputs[col] = out
            elif col in st.inputs_of:
                st.receiver_inputs[col] = out
            return out

        def attn_hooks(layer: int):
            first = layer * g.receivers_per_layer
            cache: dict[str, _Correction | None] = {}

            def make(port_index: int, port: str):
                def hook(x, hook):
                    if port_index == 0:  # q fires first: compute q, k and v corrections at once
                        cb, p, _, d = x.shape
                        cache["qkv"] = self._correction(st, slice(first, first + 3 * h), g.n_senders_before(first),
                                                        cb // st.n_candidates, p, d)
                    return patched(x, cache["qkv"], first + port_index * h, port_index * h, (port_index + 1) * h)
                return hook

            return [(hooks.head_input(layer, port), make(i, port)) for i, port in enumerate("qkv")]

        def single_hook(col: int):
            def hook(x, hook):
                cb, p, d = x.shape
                corr = self._correction(st, slice(col, col + 1), g.n_senders_before(col), cb // st.n_candidates, p, d)
                return patched(x, corr, col, 0, 1)
            return hook

        def resid_hook(layer: int):
            def hook(x, hook):
                st.resid_pre[layer] = x.detach()
                return x
            return hook

        for layer in range(start_layer, g.n_layers):
            fwd += attn_hooks(layer)
            if g.has_mlp:
                fwd.append((hooks.mlp_in(layer), single_hook(g.mlp_receiver(layer))))
            if st.resid_pre is not None:
                fwd.append((hooks.resid_pre(layer), resid_hook(layer)))
        fwd.append((hooks.resid_post(g.n_layers - 1), single_hook(g.logits_receiver)))
        return fwd

    # ---- passes ---------------------------------------------------------------------------
    def _run(self, st: _Pass, idx: slice, start_layer: int = 0, prefix: Prefix | None = None,
             positions: torch.Tensor | None = None) -> torch.Tensor:
        """One patched forward pass over examples `idx`: logits [C*b, p, vocab] (at `positions` [b, T]: [C*b, T, vocab])."""
        tokens = self.tokens[idx]
        c = st.n_candidates
        at = None if positions is None else expand_rows(positions, len(tokens)).repeat(c, 1)
        mask = None if self.attention_mask is None else self.attention_mask[idx].repeat(c, 1)
        st.ablated = [a if a.shape[0] == 1 else a[idx] for a in self.ablated]
        if start_layer > 0:
            chunk = prefix.chunks[idx.start]  # its deltas and residual: one mask's (shared) or each candidate's
            n_before = 1 + start_layer * self.graph.senders_per_layer
            st.deltas = chunk.deltas.new_empty(c, self.graph.n_senders, *chunk.deltas.shape[2:])
            st.deltas[:, :n_before] = chunk.deltas[:, :n_before]
            resid = chunk.resid_pre[start_layer]
            resid = resid if len(resid) == c * len(tokens) else resid.repeat(c, 1, 1)
            with self.model.hooks(fwd_hooks=self._hooks(st, start_layer)):
                logits = forward(self.model, tokens.repeat(c, 1), mask, start_at_layer=start_layer, resid=resid, positions=at,
                                 narrow_last_layer=not st.collect)
        else:
            with self.model.hooks(fwd_hooks=self._hooks(st, 0)):
                logits = forward(self.model, tokens.repeat(c, 1), mask, positions=at, narrow_last_layer=not st.collect)
        done = (self.graph.n_layers - start_layer) / self.graph.n_layers
        self.forward_passes += c * done * len(tokens) / len(self.tokens)
        return logits

    def _chunks(self, rows: int | None = None, candidates: int = 1):
        """Slices of examples: `rows` per chunk (default: as many as a patched pass of `candidates` masks fits)."""
        n = len(self.tokens)
        rows = rows or max(1, min(self.batch_size, self.eval_rows // candidates))
        return [slice(s, min(s + rows, n)) for s in range(0, n, rows)]

    def _new_pass(self, removed: torch.Tensor, collect: bool = False, record: bool = False,
                  inputs_of: frozenset[int] = frozenset()) -> _Pass:
        return _Pass(removed=removed, n_candidates=removed.shape[0], collect=collect,
                     grad_through_deltas=collect and bool(removed.any()), inputs_of=inputs_of,
                     receiver_inputs={} if collect or inputs_of else None, resid_pre={} if record else None)

    @torch.no_grad()
    def logits(self, kept: torch.Tensor) -> torch.Tensor:
        """Logits [C, B, pos, vocab] (C = 1 for a single [S, R] mask)."""
        removed = self.removed_weights(kept)
        outs = [self._run(self._new_pass(removed), idx) for idx in self._chunks()]
        c = removed.shape[0]
        return torch.cat([o.view(c, -1, *o.shape[1:]) for o in outs], dim=1)

    @torch.no_grad()
    def evaluate(self, kept: torch.Tensor, metric: Metric, start_layer: int = 0, prefix: Prefix | None = None,
                 per_example: bool = False) -> torch.Tensor:
        """Mean metric over all examples for each candidate mask: [C] (`per_example`: each example's, [C, B]).

        With `start_layer` and a `prefix` recorded under a mask equal to `kept` on every receiver
        before `start_layer`, only layers from `start_layer` on are recomputed.
        """
        removed = self.removed_weights(kept)
        if start_layer > 0 and (prefix is None or not self.supports_start):
            start_layer = 0
        c = removed.shape[0]
        total, each = torch.zeros(c), []
        for idx in self._chunks(candidates=c if start_layer == 0 else 1):
            logits = self._run(self._new_pass(removed), idx, start_layer, prefix, metric_positions(metric, idx))
            values = self._metric(metric, logits, idx, c)
            total += values.sum(dim=1).cpu()
            if per_example:
                each.append(values.detach().cpu())
        return torch.cat(each, dim=1) if per_example else total / len(self.tokens)

    def _metric(self, metric: Metric, logits: torch.Tensor, idx: slice, c: int) -> torch.Tensor:
        """The metric of a pass's logits (taken at the metric's positions when it declares them, as `_run` then ran)."""
        ex = torch.arange(idx.start, idx.stop, device=logits.device)
        fn = metric.at if isinstance(metric, PositionMetric) else metric
        values = fn(logits.float(), ex.repeat(c)).view(c, -1)  # float32 metrics on a bf16/fp16 model too
        if not torch.isfinite(values).all():
            raise FloatingPointError("the metric returned NaN or inf; check the task's answer tokens and the model")
        return values

    @torch.no_grad()
    def record_prefix(self, kept: torch.Tensor) -> Prefix:
        """Run `kept` once and keep each layer's incoming residual and sender differences,
        so later `evaluate(..., start_layer=l, prefix=...)` calls recompute only layers >= l."""
        removed = self.removed_weights(kept)
        if removed.shape[0] != 1:
            raise ValueError("a prefix is recorded for a single mask")
        chunks = {}
        for idx in self._chunks():
            st = self._new_pass(removed, record=True)
            self._run(st, idx, positions=_ONE_POSITION)  # its logits are not read
            chunks[idx.start] = PrefixChunk(deltas=st.deltas, resid_pre=st.resid_pre)
        return Prefix(chunks)

    def mask_gradient(self, metric: Metric, kept: torch.Tensor | None = None, ig_steps: int = 1,
                      per_example: bool = False) -> tuple[float, torch.Tensor] | tuple[float, torch.Tensor, torch.Tensor]:
        """Mean metric and its gradient d metric / d kept [S, R] at mask `kept` (default: all edges kept); with
        `per_example`, also each example's metric there [B].

        One forward and one backward pass per chunk; zero outside valid edges. With `ig_steps` = m > 1,
        the receiver gradients are averaged over inputs interpolated from the ablated to the clean input
        (alpha = 1/m, 2/m, ..., 1) and multiplied by the clean differences: EAP-IG's integrated gradients.
        """
        each: list[torch.Tensor] = []
        value, grad, _ = self._gradient(metric, kept, ig_steps, record=False, each=each)
        return (value, grad, torch.cat(each)) if per_example else (value, grad)

    def probe(self, metric: Metric, kept: torch.Tensor, ig_steps: int = 1,
              wanted: Callable[[float], bool] | None = None) -> tuple[float, torch.Tensor | None, Prefix | None]:
        """`mask_gradient` at `kept` that also records its prefix (as `record_prefix(kept)` would) from the same
        forward pass: (metric, gradient [S, R], prefix). The prefix is None when a gradient pass splits the prompts
        into other chunks than a suffix pass does (memory budget); then record it separately.

        `wanted(metric) -> bool` (with ig_steps 1): whether the gradient is wanted, decided on the forward pass's
        metric over all prompts; if not, no backward pass runs and (metric, None, None) comes back. The forward passes
        of every chunk are kept until the decision when the memory budget holds them all; else the decision takes
        a forward pass of its own (one more forward when the answer is yes)."""
        if wanted is not None and ig_steps != 1:
            raise ValueError("a gradient decided on its forward pass (wanted) takes ig_steps=1")
        if wanted is not None and self.grad_rows_in_budget < len(self.tokens):
            value = float(self.evaluate(kept, metric))
            if not wanted(value):
                return value, None, None
            wanted = None
        return self._gradient(metric, kept, ig_steps, record=True, wanted=wanted)

    def _gradient(self, metric: Metric, kept: torch.Tensor | None, ig_steps: int, record: bool,
                  wanted: Callable[[float], bool] | None = None,
                  each: list[torch.Tensor] | None = None) -> tuple[float, torch.Tensor | None, Prefix | None]:
        g = self.graph
        kept = g.full_mask() if kept is None else kept
        removed = self.removed_weights(kept)
        if removed.shape[0] != 1:
            raise ValueError("mask_gradient takes a single [S, R] mask")
        if ig_steps < 1:
            raise ValueError(f"ig_steps must be at least 1, got {ig_steps}")
        chunks = self._chunks(self.grad_rows)
        record = record and chunks == self._chunks(candidates=1)

        def forward(idx: slice, step: int) -> tuple[_Pass, torch.Tensor]:
            st = self._new_pass(removed, collect=True, record=record and step == ig_steps)
            st.input_alpha = None if step == ig_steps else step / ig_steps
            with torch.enable_grad(), frozen_weights(self.model):
                logits = self._run(st, idx, positions=metric_positions(metric, idx))
                return st, self._metric(metric, logits, idx, 1)

        grad = torch.zeros(g.n_senders, g.n_receivers, dtype=torch.float64)
        recorded: dict[int, PrefixChunk] = {}

        def finish(idx: slice, st: _Pass, summed: dict[int, torch.Tensor]) -> None:
            """Edge gradients of one chunk from its receiver gradients `summed` and its (last step's) pass."""
            if record:
                recorded[idx.start] = PrefixChunk(deltas=st.deltas.detach(), resid_pre=st.resid_pre)
            deltas = st.deltas.detach()[0]  # [S, b*p, d]
            real = None if self.attention_mask is None else self.attention_mask[idx]
            for col, gr in summed.items():
                width, n_before = (g.n_heads if gr.dim() == 4 else 1), g.n_senders_before(col)
                grad[:n_before, col:col + width] += self._edge_grads(deltas[:n_before], gr, real)

        total = 0.0  # metric summed over prompts, at the last (clean) step
        if wanted is not None:  # every chunk's forward first (the budget holds them), the decision, then the backwards
            passes = [(idx, *forward(idx, 1)) for idx in chunks]
            total = sum(float(values.detach().sum()) for _, _, values in passes)
            if not wanted(total / len(self.tokens)):
                return total / len(self.tokens), None, None
            for idx, st, values in passes:
                summed: dict[int, torch.Tensor] = {}
                self._add_receiver_grads(summed, st, values, idx, 1)
                finish(idx, st, summed)
        else:
            for idx in chunks:
                summed = {}
                for step in range(1, ig_steps + 1):
                    st, values = forward(idx, step)
                    self._add_receiver_grads(summed, st, values, idx, ig_steps)
                total += float(values.detach().sum())
                if each is not None:  # each example's metric at the last (clean) step
                    each.append(values.detach()[0].cpu())
                finish(idx, st, summed)
        return total / len(self.tokens), (grad * g.valid).to(torch.float32), Prefix(recorded) if record else None

    def _add_receiver_grads(self, summed: dict[int, torch.Tensor], st: _Pass, values: torch.Tensor, idx: slice,
                            ig_steps: int) -> None:
        """Backward from one chunk's metric `values` [1, b] to its receiver inputs; adds each receiver's gradient / ig_steps
        into `summed` (first receiver column -> gradient)."""
        with torch.enable_grad():
            cols = sorted(st.receiver_inputs)
            grads = torch.autograd.grad(values.sum() / len(self.tokens), [st.receiver_inputs[c] for c in cols],
                                        allow_unused=True)
        self.backward_passes += (idx.stop - idx.start) / len(self.tokens)
        for col, gr in zip(cols, grads, strict=True):
            if gr is not None:
                gr = gr / ig_steps if ig_steps > 1 else gr
                summed[col] = summed[col] + gr if col in summed else gr

    def _edge_grads(self, deltas: torch.Tensor, gr: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """<D_s, grad at receiver> for the receivers of one hook: deltas [S, b*p, d] -> [S, n_cols] (float64).
        `real` [b, p]: positions outside it (padding) are left out of the sum."""
        if gr.dim() == 3:
            gr = gr[:, :, None]
        elif gr.shape[2] != self.graph.n_heads:
            # grouped k/v input (one per group; one for all heads with multi-query attention): each head's receiver
            # moves the group's input by 1/group of its correction
            gr = gr.repeat_interleave(self.kv_group, dim=2) / self.kv_group
        if real is not None:
            gr = torch.where(real.to(gr.device)[:, :, None, None], gr, 0)
        b, p, n, d = gr.shape
        # one product per token, summed over tokens: no copy of the gradients into [n_cols, b*p*d]
        return torch.bmm(deltas.transpose(0, 1), gr.reshape(b * p, -1, d).transpose(1, 2)).sum(0).double()


@dataclass
class PrefixChunk:
    """What a suffix pass over one chunk of prompts starts from: sender differences and the residual entering a layer,
    of one mask (shared by every candidate) or of each candidate."""

    deltas: torch.Tensor  # [1 | C, S' >= senders before the start layer, b*p, d]
    resid_pre: dict[int, torch.Tensor]  # layer -> [b | C*b, p, d]


@dataclass
class Prefix:
    """Per-chunk residual streams and sender differences of one recorded pass (see `record_prefix`)."""

    chunks: dict[int, PrefixChunk]


@contextlib.contextmanager
def frozen_weights(model: nn.Module):
    """Run with no parameter requiring a gradient (restored afterwards): a gradient pass wants gradients at receiver
    inputs only, and autograd then keeps no activation for the weights' gradients (less memory per prompt)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Run with the model in eval mode (no dropout), restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
