"""Incremental edge tests inside one layer: what an ACDC step changes, recomputed node by node.

An ACDC step removes edges into one receiver; the candidates of a speculative batch remove the first k of a list
of senders into it. Nothing else in the receiver's layer changes: the other heads keep their inputs and outputs,
and the receiver's head keeps its other ports. So with the layer's state under the current circuit at hand, a
candidate costs one head (a k/v group's heads under grouped-query attention; or the MLP, or only the unembedding)
plus what reads it:

    x_r(k)   = x_r - sum_{j <= k} D_{s_j}                 the receiver's input without the first k edges
    change   = node(x_r(k)) - node(x_r)                   its node's output moves by this
    x_m(k)   = x_m + kept[node, m] * change               the layer's MLP input (a removed edge cancels the change)
    then the MLP's change, and the logits' input or the residual entering the next layer likewise.

In the last layer only the positions the metric reads are computed (the head's keys and values still cover
every position). Below it, the layers after the receiver's run as a suffix pass with each candidate's residual
and sender differences. `accept(n)` makes the n-th candidate the new state, so a layer's base pass runs once
however many of its edges are removed. Models opt in with `supports_node_steps` (our `SmallTransformer`, so
also the native twins of bridge models, `acdc_lite.twin`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from acdc_lite.graph import HEAD_PORTS, ModelGraph, NodeKind
from acdc_lite.patching import EdgePatcher, Metric, Prefix, PrefixChunk, expand_rows, metric_positions


def supports_steps(patcher: EdgePatcher) -> bool:
    """Whether `patcher`'s model computes single nodes (see module docstring) for this graph."""
    return getattr(patcher.model, "supports_node_steps", False) and not patcher.graph.parallel_attn_mlp


def node_shares(model) -> tuple[float, float]:
    """(one head, one MLP) of `model` as shares of a forward pass, by their multiply-adds per token (2 x (heads +
    k/v heads) x d_head for a layer's attention, 2 or, gated, 3 x d_mlp for its MLP, per d_model): what a node step
    counts for recomputing one."""
    cfg = model.cfg
    attn = 2 * (cfg.n_heads + cfg.kv_heads) * cfg.d_head
    mlp = (3 if cfg.mlp_kind == "gated" else 2) * cfg.d_mlp
    return attn / (attn + mlp) / cfg.n_heads / cfg.n_layers, mlp / (attn + mlp) / cfg.n_layers


def _at(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """x [..., b, p, d] at `positions` [b, T] of each row (None: all positions)."""
    if positions is None:
        return x
    rows = torch.arange(positions.shape[0], device=x.device)[:, None]
    return x[..., rows, positions.to(x.device), :]


@dataclass
class _Chunk:
    """The layer's state under the current circuit for the examples `idx`. Tensors `[b, P', d]` hold the positions
    `positions` reads (P' = T in the last layer when the metric names positions, else every position)."""

    idx: slice
    positions: torch.Tensor | None  # [b, T] or None
    mask: torch.Tensor | None  # [b, p] attention mask (None: no padding)
    deltas: torch.Tensor  # [S_l, b, p, d] differences of the senders before the layer (fixed while it is visited)
    inputs: dict[int, torch.Tensor]  # head receiver column -> its (un-normalised) input [b, p, d]
    results: torch.Tensor  # [H, b, P', d] the layer's head results
    ablated_heads: torch.Tensor  # [H, b, P', d] their ablated values (expanded views)
    mlp_in: torch.Tensor | None = None  # [b, P', d]
    mlp_out: torch.Tensor | None = None
    ablated_mlp: torch.Tensor | None = None
    logits_in: torch.Tensor | None = None  # [b, P', d] (last layer)
    resid_post: torch.Tensor | None = None  # [b, p, d] residual leaving the layer (below the last layer)
    trial: dict[str, torch.Tensor] = field(default_factory=dict)  # the last candidates' states, [C, ...]


class LayerSteps:
    """Tests of edges into the receivers of layer `layer` (and `logits` when it is the last), under `kept`.

    Use `try_removals(slot, senders)` (a receiver slot: one column, or a k/v group's columns under grouped-query
    attention) -> each candidate's mean metric, then `accept(n)` with the number of
    leading candidates whose removal stands. `kept` must be kept in step by the caller (it is read, not copied:
    the edges out of the layer's nodes, which weight their changes, do not change while the layer is visited)."""

    def __init__(self, patcher: EdgePatcher, metric: Metric, kept: torch.Tensor, layer: int, prefix: Prefix | None):
        self.patcher, self.metric, self.kept, self.layer = patcher, metric, kept, layer
        g = patcher.graph
        self.graph: ModelGraph = g
        self.block = patcher.model.blocks[layer]
        self.last = layer == g.n_layers - 1
        self.head_share, self.mlp_share = node_shares(patcher.model)
        self.chunks = [self._base(idx, prefix) for idx in patcher._chunks()]
        self.slot: tuple[int, ...] = ()

    # ---- the layer's state ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _base(self, idx: slice, prefix: Prefix | None) -> _Chunk:
        """One patched pass from this layer under `kept`, keeping what the candidates start from."""
        p, g, layer = self.patcher, self.graph, self.layer
        b, n = idx.stop - idx.start, g.n_senders
        firsts = [g.head_receiver(layer, port, 0) for port in HEAD_PORTS]
        keep = firsts + [g.mlp_receiver(layer)] * g.has_mlp + [g.logits_receiver] * self.last
        st = p._new_pass(p.removed_weights(self.kept), record=not self.last, inputs_of=frozenset(keep))
        positions = expand_rows(metric_positions(self.metric, idx), b)
        p._run(st, idx, layer, prefix if layer > 0 else None, positions)
        where = positions if self.last else None
        deltas = st.deltas[0].view(n, b, -1, st.deltas.shape[-1])
        shape = deltas.shape[1:]
        heads = slice(g.head_sender(layer, 0), g.head_sender(layer, 0) + g.n_heads)
        groups = {grp.start: i for i, grp in enumerate(g.sender_groups)}
        ablated_heads = _at(self._ablated(groups[heads.start], idx).permute(2, 0, 1, 3).expand(g.n_heads, *shape), where)
        inputs = {}  # a k/v group's heads share one input (grouped-query attention)
        for first in firsts:
            x = st.receiver_inputs[first]  # [b, p, n, d], n = heads or k/v heads
            inputs.update({first + h: x[:, :, h // (g.n_heads // x.shape[2])] for h in range(g.n_heads)})
        chunk = _Chunk(idx=idx, positions=where, mask=None if p.attention_mask is None else p.attention_mask[idx],
                       deltas=self._before(deltas, heads.start, idx, prefix), inputs=inputs,
                       results=_at(deltas[heads], where) + ablated_heads, ablated_heads=ablated_heads)
        if g.has_mlp:
            m = g.mlp_sender(layer)
            chunk.ablated_mlp = _at(self._ablated(groups[m], idx)[:, :, 0].expand(shape), where)
            chunk.mlp_out = _at(deltas[m], where) + chunk.ablated_mlp
            chunk.mlp_in = _at(st.receiver_inputs[g.mlp_receiver(layer)], where)
        if self.last:
            chunk.logits_in = _at(st.receiver_inputs[g.logits_receiver], where)
        else:
            chunk.resid_post = st.resid_pre[layer + 1]
        return chunk

    @staticmethod
    def _before(deltas: torch.Tensor, n: int, idx: slice, prefix: Prefix | None) -> torch.Tensor:
        """The first `n` senders' differences [n, b, p, d]: the prefix's own rows where it has them (the pass copied
        them from there), so the pass's buffer of every sender is not kept alive."""
        if prefix is None or n == 1:
            return deltas[:n].clone()
        return prefix.chunks[idx.start].deltas[0, :n].view(n, *deltas.shape[1:])

    def _ablated(self, group: int, idx: slice) -> torch.Tensor:
        a = self.patcher.ablated[group]
        return a if a.shape[0] == 1 else a[idx]

    def _diff(self, ch: _Chunk, senders: list[int], where: torch.Tensor | None) -> torch.Tensor:
        """Current differences D_s of `senders` [C, b, P', d] (senders before the layer at `where`)."""
        g, first = self.graph, self.graph.head_sender(self.layer, 0)
        out = []
        for s in senders:
            if s < first:
                out.append(_at(ch.deltas[s], where))
            elif g.has_mlp and s == g.mlp_sender(self.layer):
                out.append(ch.mlp_out - ch.ablated_mlp)
            else:
                out.append(ch.results[s - first] - ch.ablated_heads[s - first])
        return torch.stack(out)

    # ---- candidates -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def try_removals(self, slot: tuple[int, ...], senders: list[int]) -> list[float]:
        """Mean metric with the edges from senders[:k+1] into the receiver `slot` removed, for k = 0..C-1: [C]."""
        self.slot = slot
        total = torch.zeros(len(senders))
        for ch in self.chunks:
            logits = self._candidates(ch, slot, senders)
            total += self.patcher._metric(self.metric, logits, ch.idx, len(senders)).sum(dim=1).cpu()
        return (total / len(self.patcher.tokens)).tolist()

    def _candidates(self, ch: _Chunk, slot: tuple[int, ...], senders: list[int]) -> torch.Tensor:
        g, layer, model = self.graph, self.layer, self.patcher.model
        node, port = g.receivers[slot[0]]
        c, frac = len(senders), (ch.idx.stop - ch.idx.start) / len(self.patcher.tokens)
        changes: dict[int, torch.Tensor] = {}  # sender -> change of its output [C, b, P', d]
        trial: dict[str, torch.Tensor] = {}
        if node.kind is NodeKind.HEAD:  # the slot's heads (a k/v group's under grouped-query attention)
            cum = self._diff(ch, senders, None).cumsum(dim=0)  # senders before the layer: every position
            trial["input"] = ch.inputs[slot[0]] - cum  # [C, b, p, d]
            ln = self.block.ln1
            for col in slot:
                h = g.receivers[col][0].head
                raw = [ch.inputs[g.head_receiver(layer, q, h)] for q in HEAD_PORTS]
                raw[HEAD_PORTS.index(port)] = trial["input"]
                raw[0] = _at(raw[0], ch.positions)  # queries only where the metric reads (in the last layer)
                trial[f"result {h}"] = self.block.attn.head_result(h, *(ln(x) for x in raw), ch.positions, ch.mask)
                changes[g.head_sender(layer, h)] = trial[f"result {h}"] - ch.results[h]
            self.patcher.forward_passes += c * frac * self.head_share * len(slot) * self._position_share(ch)
            if g.has_mlp:
                mlp = g.mlp_receiver(layer)
                trial["mlp_in"] = ch.mlp_in + sum(self.kept[s, mlp].float() * d for s, d in changes.items())
        elif node.kind is NodeKind.MLP:
            trial["mlp_in"] = ch.mlp_in - self._diff(ch, senders, ch.positions).cumsum(dim=0)
        else:
            trial["logits_in"] = ch.logits_in - self._diff(ch, senders, ch.positions).cumsum(dim=0)
        if "mlp_in" in trial:
            trial["mlp_out"] = self.block.mlp(self.block.ln2(trial["mlp_in"]))
            changes[g.mlp_sender(layer)] = trial["mlp_out"] - ch.mlp_out
            self.patcher.forward_passes += c * frac * self.mlp_share * self._position_share(ch)
        ch.trial = trial
        if self.last:
            if "logits_in" not in trial:
                logits = g.logits_receiver
                trial["logits_in"] = ch.logits_in + sum(self.kept[s, logits].float() * d for s, d in changes.items())
            x = trial["logits_in"]
            return (model.ln_final(x) @ model.W_U + model.b_U).flatten(0, 1)  # [C*b, P', vocab]
        trial["resid_post"] = ch.resid_post + sum(changes.values())
        return self._suffix(ch, changes, trial["resid_post"], c)

    def _position_share(self, ch: _Chunk) -> float:
        return 1.0 if ch.positions is None else ch.positions.shape[1] / ch.deltas.shape[2]

    def _suffix(self, ch: _Chunk, changes: dict[int, torch.Tensor], resid: torch.Tensor, c: int) -> torch.Tensor:
        """Logits [C*b, T, vocab] from the layers after this one, each candidate with its own residual and differences."""
        g, p = self.graph, self.patcher
        first = g.head_sender(self.layer, 0)
        n_before = g.head_sender(self.layer + 1, 0)
        b, pos, d = resid.shape[1:]
        deltas = resid.new_empty(c, n_before, b, pos, d)
        deltas[:, :first] = ch.deltas
        deltas[:, first:first + g.n_heads] = (ch.results - ch.ablated_heads)
        if g.has_mlp:
            deltas[:, g.mlp_sender(self.layer)] = ch.mlp_out - ch.ablated_mlp
        for s, change in changes.items():
            deltas[:, s] += change
        chunk = PrefixChunk(deltas=deltas.view(c, n_before, b * pos, d), resid_pre={self.layer + 1: resid.flatten(0, 1)})
        removed = p.removed_weights(self.kept).expand(c, -1, -1)
        return p._run(p._new_pass(removed), ch.idx, self.layer + 1, Prefix({ch.idx.start: chunk}),
                      metric_positions(self.metric, ch.idx))

    def accept(self, n: int) -> None:
        """The removals of the first `n` candidates of the last `try_removals` stand: candidate n-1 is the state."""
        if n == 0:
            return
        g, k = self.graph, n - 1
        for ch in self.chunks:
            t = {key: value[k] for key, value in ch.trial.items()}
            if "input" in t:
                ch.results = ch.results.clone()
                for col in self.slot:
                    h = g.receivers[col][0].head
                    ch.inputs[col] = t["input"]
                    ch.results[h] = t[f"result {h}"]
            if "mlp_in" in t:
                ch.mlp_in, ch.mlp_out = t["mlp_in"], t["mlp_out"]
            if "logits_in" in t:
                ch.logits_in = t["logits_in"]
            if "resid_post" in t:
                ch.resid_post = t["resid_post"]
            ch.trial = {}
