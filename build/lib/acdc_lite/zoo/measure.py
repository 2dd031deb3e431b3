"""Measurements behind the zoo's model cards: head attention scores, task accuracy, head ablations.

The card recipes (scores on BOS R R sequences, IOI position scores) live here; attention patterns and
single-head ablations come from the head detectors (`acdc_lite.explore.heads`), which score any task.

All functions are pure (they read the model, never change it) and work on any model from
`load_model` (our SmallTransformer or a TransformerBridge).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.explore import heads as explore_heads
from acdc_lite.explore.heads import attention_patterns
from acdc_lite.graph import Node, NodeKind, Port
from acdc_lite.models import model_info
from acdc_lite.task import Task


def builtin_task_module(name: str) -> ModuleType:
    """A task module from `acdc_lite.tasks`; from the `tasks` folder in a source checkout that is not installed."""
    try:
        return importlib.import_module(f"acdc_lite.tasks.{name}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("acdc_lite.tasks"):
            raise
        return importlib.import_module(f"tasks.{name}")


def offset_scores(patterns: list[torch.Tensor], offset: int, queries: slice) -> torch.Tensor:
    """[layers, heads]: mean attention from query q to key q - offset over the query positions `queries`."""
    out = []
    for pat in patterns:
        q = torch.arange(pat.shape[-2])[queries]
        out.append(pat[:, :, q, q - offset].mean(dim=(0, 2)))
    return torch.stack(out)


def prev_token_scores(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[layers, heads]: mean attention to the previous token, queries from position 2 on."""
    return offset_scores(attention_patterns(model, tokens), 1, slice(2, None))


def induction_scores(model: nn.Module, tokens: torch.Tensor, half: int) -> torch.Tensor:
    """[layers, heads] on BOS R R sequences (R of `half` tokens): mean attention from each second-copy
    token to the token after its first occurrence (key q - half + 1)."""
    return offset_scores(attention_patterns(model, tokens), half - 1, slice(tokens.shape[1] - half, None))


@torch.no_grad()
def task_metrics(model: nn.Module, task: Task) -> dict[str, float]:
    """Mean logit difference on clean and corrupted prompts, and clean top-1 accuracy."""
    idx = torch.arange(len(task))
    logits_clean, logits_corrupt = model(task.clean), model(task.corrupt)
    diff = task.metric("logit_diff")
    acc = task.metric("accuracy")
    return {"logit_diff_clean": float(diff(logits_clean, idx).mean()),
            "logit_diff_corrupt": float(diff(logits_corrupt, idx).mean()),
            "accuracy": float(acc(logits_clean, idx).mean()),
            "accuracy_corrupt": float(acc(logits_corrupt, idx).mean())}


def _corrupt_head_results(model: nn.Module, task: Task) -> tuple[dict[int, torch.Tensor], float, float]:
    """Every layer's head results [b, p, h, d] on the corrupted prompts, and mean clean / corrupt logit difference."""
    metric, idx = task.metric("logit_diff"), torch.arange(len(task))
    results: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(x, hook):
            results[layer] = x.detach().clone()
        return hook

    n_layers = model_info(model).n_layers
    with model.hooks(fwd_hooks=[(hooks.head_result(layer), keep(layer)) for layer in range(n_layers)]):
        corrupt = float(metric(model(task.corrupt), idx).mean())
    return results, float(metric(model(task.clean), idx).mean()), corrupt


def _head_patches(results: dict[int, torch.Tensor], heads: list[tuple[int, int]]) -> list:
    """Forward hooks replacing `heads` [(layer, head)] by their outputs in `results` (from _corrupt_head_results)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(layer, hs):
        def patch(x, hook):
            x = x.clone()
            x[:, :, hs] = results[layer][:, :, hs]
            return x
        return patch

    return [(hooks.head_result(layer), make(layer, hs)) for layer, hs in by_layer.items()]


def _patched_metric(model: nn.Module, task: Task, results: dict[int, torch.Tensor], heads: list[tuple[int, int]]) -> float:
    """Mean logit difference on clean prompts with `heads` [(layer, head)] replaced by their corrupted outputs."""
    with model.hooks(fwd_hooks=_head_patches(results, heads)):
        return float(task.metric("logit_diff")(model(task.clean), torch.arange(len(task))).mean())


def head_ablation_effects(model: nn.Module, task: Task) -> torch.Tensor:
    """[layers, heads]: share of the clean-minus-corrupt logit difference lost when one head's output
    (at every position) is replaced by its output on the corrupted prompt (resample ablation)."""
    return explore_heads.head_ablation_effects(model, task, metric="logit_diff")


@torch.no_grad()
def joint_ablation_effect(model: nn.Module, task: Task, heads: list[str]) -> float:
    """Share of the clean-minus-corrupt logit difference lost when all `heads` ("a0.h1", ...) are resample-ablated together."""
    nodes = [Node.parse(h) for h in heads]
    results, clean, corrupt = _corrupt_head_results(model, task)
    return (clean - _patched_metric(model, task, results, [(n.layer, n.head) for n in nodes])) / (clean - corrupt)


def classify_heads(prev: torch.Tensor, induction: torch.Tensor, effects: torch.Tensor,
                   min_score: float = 0.5, min_effect: float = 0.1) -> list[dict]:
    """Ground-truth heads: attention score >= min_score AND ablation effect >= min_effect."""
    out = []
    for layer in range(prev.shape[0]):
        for head in range(prev.shape[1]):
            for cls, score in (("previous-token", prev), ("induction", induction)):
                if score[layer, head] >= min_score and effects[layer, head] >= min_effect:
                    out.append({"head": f"a{layer}.h{head}", "class": cls, "score": round(float(score[layer, head]), 3),
                                "ablation_effect": round(float(effects[layer, head]), 3)})
    return out


# ---- IOI ------------------------------------------------------------------------------------
def ioi_positions(task: Task) -> dict[str, torch.Tensor]:
    """[N] positions in each clean IOI prompt: IO (the indirect object's mention), S1 and S2 (the
    subject's first and second mention) and END (the answer position), found from the answer and foil ids."""
    io_id, s_id = task.answers[:, 0], task.foils[:, 0]
    pos = torch.arange(task.clean.shape[1])
    big = task.clean.shape[1]
    io = torch.where(task.clean == io_id[:, None], pos, big).min(dim=1).values
    s1 = torch.where(task.clean == s_id[:, None], pos, big).min(dim=1).values
    s2 = torch.where(task.clean == s_id[:, None], pos, -1).max(dim=1).values
    if (io == big).any() or (s1 == big).any() or (s1 == s2).any():
        raise ValueError("not an IOI task: every clean prompt needs the answer once and the foil twice")
    return {"IO": io, "S1": s1, "S2": s2, "END": task.answer_pos}


@torch.no_grad()
def ioi_attention_scores(model: nn.Module, task: Task, ablate: list[str] | None = None) -> dict[str, torch.Tensor]:
    """[layers, heads] mean attention on the clean IOI prompts: END->IO, END->S1, END->S2, S2->S1
    (duplicate token), and previous-token (every query from position 2 on, to the key before it).
    With `ablate` (["a0.h2", ...]), those heads' outputs are resample-ablated (replaced by their
    outputs on the corrupted prompts) while the patterns are recorded: how later heads depend on them."""
    if ablate:
        results = _corrupt_head_results(model, task)[0]
        nodes = [Node.parse(h) for h in ablate]
        patches = _head_patches(results, [(n.layer, n.head) for n in nodes])
        with model.hooks(fwd_hooks=patches):
            pats = attention_patterns(model, task.clean)
    else:
        pats = attention_patterns(model, task.clean)
    p = ioi_positions(task)
    rows = torch.arange(len(task))

    def at(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return torch.stack([pat[rows, :, query, key].mean(dim=0) for pat in pats])

    return {"end_to_io": at(p["END"], p["IO"]), "end_to_s1": at(p["END"], p["S1"]), "end_to_s2": at(p["END"], p["S2"]),
            "s2_to_s1": at(p["S2"], p["S1"]), "previous_token": offset_scores(pats, 1, slice(2, None))}


@torch.no_grad()
def ioi_direct_logit_attribution(model: nn.Module, task: Task) -> torch.Tensor | None:
    """[layers, heads]: mean over clean prompts of each head's output at END dotted with W_U[IO] - W_U[S],
    the part of the IO - S logit difference a head writes directly. Exact only without a final
    normalisation, so None for other models."""
    from acdc_lite.transformer import SmallTransformer

    if not isinstance(model, SmallTransformer) or model.cfg.normalization != "none":
        return None
    results: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(x, hook):
            results[layer] = x.detach()
        return hook

    n_layers = model_info(model).n_layers
    with model.hooks(fwd_hooks=[(hooks.head_result(layer), keep(layer)) for layer in range(n_layers)]):
        model(task.clean)
    rows = torch.arange(len(task))
    direction = (model.W_U[:, task.answers[:, 0]] - model.W_U[:, task.foils[:, 0]]).T  # [N, d_model]
    return torch.stack([torch.einsum("nhd,nd->nh", results[layer][rows, task.answer_pos], direction).mean(dim=0)
                        for layer in range(n_layers)])


IOI_CLASSES = {  # class -> the attention score that defines it (named after the GPT-2 IOI circuit's classes)
    "name-mover": "end_to_io",
    "s-inhibition": "end_to_s2",
    "duplicate-token": "s2_to_s1",
    "previous-token": "previous_token",
}


def classify_ioi_heads(scores: dict[str, torch.Tensor], effects: torch.Tensor,
                       min_score: float = 0.5, min_effect: float = 0.1) -> list[dict]:
    """Heads whose defining attention score (IOI_CLASSES) is >= min_score and whose single-head ablation
    effect is >= min_effect; a name mover must also attend to IO at least twice as much as to S1 and S2
    together (a layer-0 head attending to both names alike is not one). A head can be in several classes."""
    out = []
    for layer in range(effects.shape[0]):
        for head in range(effects.shape[1]):
            for cls, key in IOI_CLASSES.items():
                score = float(scores[key][layer, head])
                if cls == "name-mover" and score < 2 * float(scores["end_to_s1"][layer, head] + scores["end_to_s2"][layer, head]):
                    continue
                if score >= min_score and effects[layer, head] >= min_effect:
                    out.append({"head": f"a{layer}.h{head}", "class": cls, "score": round(score, 3),
                                "ablation_effect": round(float(effects[layer, head]), 3)})
    return out


# ---- circuits measured by patching: nodes, pairs, edges, the complement ------------------------
class CircuitProbe:
    """Resample-ablation measurements of one model on one task through the EdgePatcher.

    An effect is the share of the clean-minus-corrupt metric lost: (full - patched) / (full - empty),
    where `full` keeps every edge (the clean model) and `empty` ablates every sender (the corrupted run).
    Ablating a node = removing every outgoing edge of it (its output replaced by its corrupted output
    for every later component).
    """

    def __init__(self, model: nn.Module, task: Task, metric: str | None = None, batch_size: int = 64):
        from acdc_lite.graph import ModelGraph
        from acdc_lite.patching import Ablation, EdgePatcher, ablated_outputs

        self.graph = ModelGraph.from_model(model)
        ablated = ablated_outputs(model, self.graph, task.corrupt, Ablation.RESAMPLE, batch_size)
        self.patcher = EdgePatcher(model, self.graph, task.clean, ablated, batch_size)
        self.metric_name = metric or task.default_metric
        self.metric = task.metric(self.metric_name, model=model)
        info = model_info(model)
        self.kv_group = info.n_heads // info.n_kv_heads
        both = self.patcher.evaluate(torch.stack([self.graph.full_mask(), self.graph.empty_mask()]), self.metric)
        self.full, self.empty = float(both[0]), float(both[1])

    @property
    def components(self) -> list[str]:
        """Every head and MLP, in sender order."""
        return [str(n) for n in self.graph.senders if str(n) != "input"]

    def effects(self, masks: torch.Tensor) -> torch.Tensor:
        """[C] effects of C kept-edge masks [C, S, R]."""
        values = self.patcher.evaluate(masks, self.metric)
        return (self.full - values) / (self.full - self.empty)

    def without_nodes(self, nodes) -> torch.Tensor:
        """[S, R] mask: every edge kept except the outgoing edges of `nodes` (names)."""
        kept = self.graph.full_mask()
        for n in nodes:
            kept[self.graph.senders.index(Node.parse(n))] = False
        return kept

    def only_nodes(self, nodes) -> torch.Tensor:
        """[S, R] mask: the edges between `nodes` (plus input and logits); all other senders ablated.
        Under grouped-query attention a k/v input is kept for a whole group when one of its heads is in `nodes`."""
        from acdc_lite.graph import tie_kv_groups

        keep = {Node.parse(n) for n in nodes}
        senders = torch.tensor([n.kind is NodeKind.INPUT or n in keep for n in self.graph.senders])
        receivers = torch.tensor([n.kind is NodeKind.LOGITS or n in keep for n, _ in self.graph.receivers])
        return tie_kv_groups(self.graph, senders[:, None] & receivers[None, :] & self.graph.valid, self.kv_group)

    def node_effects(self, nodes=None) -> dict[str, float]:
        """Effect of ablating each node alone (every head and MLP by default)."""
        nodes = list(nodes or self.components)
        values = self.effects(torch.stack([self.without_nodes([n]) for n in nodes]))
        return {n: float(v) for n, v in zip(nodes, values, strict=True)}

    def pair_effects(self, nodes) -> dict[str, dict[str, float]]:
        """For every pair of `nodes`: the effect of ablating both, and its excess over the two single effects."""
        nodes = list(nodes)
        single = self.node_effects(nodes)
        pairs = [(a, b) for i, a in enumerate(nodes) for b in nodes[i + 1:]]
        if not pairs:
            return {}
        values = self.effects(torch.stack([self.without_nodes(p) for p in pairs]))
        return {f"{a}+{b}": {"effect": float(v), "interaction": float(v) - single[a] - single[b]}
                for (a, b), v in zip(pairs, values, strict=True)}

    def edge_effects(self, edges, within=None) -> dict[str, float]:
        """Effect of removing each edge alone: from the full model, or from the mask `within`."""
        base = self.graph.full_mask() if within is None else within
        masks = []
        for e in edges:
            m = base.clone()
            s, r = self.graph.edge_index(e)
            m[s, r] = False
            if self.kv_group > 1:
                m = _tie_kv(self.graph, m, self.kv_group, r)
            masks.append(m)
        if not masks:
            return {}
        values = self.effects(torch.stack(masks))
        return {str(e): float(v) for e, v in zip(edges, values, strict=True)}

    def faithfulness(self, kept: torch.Tensor) -> float:
        """(metric(kept) - empty) / (full - empty) of one mask [S, R]."""
        return 1.0 - float(self.effects(kept[None])[0])

    def edges_between(self, nodes) -> list:
        """Every edge of the graph among `nodes`, input and logits (the candidate edges of a node circuit)."""
        mask = self.only_nodes(nodes)
        return self.graph.edges_from_mask(mask)


def _tie_kv(graph, mask: torch.Tensor, group: int, receiver: int) -> torch.Tensor:
    """Copy a removed k/v edge to the other heads of its kv group (a binary mask must agree within a group)."""
    node, port = graph.receivers[receiver]
    if node.kind is not NodeKind.HEAD or port not in (Port.K, Port.V):
        return mask
    first = node.head - node.head % group
    for i in range(group):
        col = graph.receivers.index((Node(node.kind, node.layer, first + i), port))
        mask[:, col] &= mask[:, receiver]
    return mask


def attention_to(model: nn.Module, tokens: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """[layers, heads]: mean attention from position query[i] to key[i] of each prompt i (both [N])."""
    pats = attention_patterns(model, tokens)
    rows = torch.arange(len(tokens))
    return torch.stack([pat[rows, :, query, key].mean(dim=0) for pat in pats])


def head_names(scores: torch.Tensor) -> dict[str, float]:
    """{"a0.h1": score} from a [layers, heads] tensor."""
    return {f"a{layer}.h{head}": float(scores[layer, head]) for layer in range(scores.shape[0]) for head in range(scores.shape[1])}


def circuit_measurements(probe: CircuitProbe, head_scores: dict[str, torch.Tensor], min_score: float = 0.5,
                         min_effect: float = 0.1, min_edge_effect: float = 0.05) -> tuple[list[dict], dict]:
    """Ground truth of a model card from patching alone, and the measurements behind it.

    Nodes: every head and MLP whose single resample ablation loses >= `min_effect` of the metric. A head's
    class is the `head_scores` class ({class: [layers, heads] attention score}) it scores highest on if that
    is >= `min_score`, else "unclassified"; an MLP's class is "mlp". Edges: the edges among those nodes
    (input and logits included) whose removal from the node circuit alone loses >= `min_edge_effect`.
    Also measured: every pair of circuit nodes ablated together, each claimed edge removed from the
    full model (path patching), the circuit alone (everything outside ablated) and everything outside ablated
    with the circuit intact, on nodes and on claimed edges. Returns (ground_truth entries, measurement dict).
    """
    from acdc_lite.graph import tie_kv_groups

    effects = probe.node_effects()
    nodes = [n for n, e in effects.items() if e >= min_effect]
    truth = []
    for n in nodes:
        node = Node.parse(n)
        entry = {"node": n, "class": "mlp"}
        if node.kind is NodeKind.HEAD:
            best = max(head_scores, key=lambda c: float(head_scores[c][node.layer, node.head]))
            score = float(head_scores[best][node.layer, node.head])
            entry = {"node": n, "class": best if score >= min_score else "unclassified", "score": round(score, 3)}
        truth.append({**entry, "ablation_effect": round(effects[n], 3)})
    outside = [c for c in probe.components if c not in nodes]
    circuit = probe.only_nodes(nodes)
    candidates = probe.edges_between(nodes)
    circuit_loss = 1.0 - probe.faithfulness(circuit)
    # what removing the edge costs the circuit: (m(circuit) - m(circuit - e)) / (full - empty)
    within = {k: v - circuit_loss for k, v in probe.edge_effects(candidates, within=circuit).items()}
    claimed = [e for e in candidates if within[str(e)] >= min_edge_effect]
    claimed_mask = tie_kv_groups(probe.graph, probe.graph.mask_from_edges(claimed), probe.kv_group)
    path = probe.edge_effects(claimed)
    measurement = {
        "metric": probe.metric_name,
        "metric_full": round(probe.full, 4),
        "metric_empty": round(probe.empty, 4),
        "node_ablation_effects": {k: round(v, 3) for k, v in effects.items()},
        "pair_ablation_effects": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in probe.pair_effects(nodes).items()},
        "edges": [{"edge": str(e), "removed_from_circuit": round(within[str(e)], 3),
                   "removed_from_full_model": round(path[str(e)], 3)} for e in claimed],
        "circuit_faithfulness_nodes": round(probe.faithfulness(circuit), 3),
        "circuit_faithfulness_edges": round(probe.faithfulness(claimed_mask), 3),
        "outside_ablated_effect": round(float(probe.effects(probe.without_nodes(outside)[None])[0]), 3) if outside else 0.0,
        "circuit_ablated_effect": round(float(probe.effects(probe.without_nodes(nodes)[None])[0]), 3) if nodes else 0.0,
        "criterion": (f"a head or MLP is in the circuit if resample-ablating it alone (its output replaced by its output on the "
                      f"corrupted prompt, for every later component) loses >= {min_effect} of the clean-minus-corrupt "
                      f"{probe.metric_name}; a head's class is the attention score it is highest on if >= {min_score}, "
                      f"else 'unclassified'; an edge among circuit nodes (input and logits included) is claimed if removing "
                      f"it from the circuit alone loses >= {min_edge_effect}"),
        "how": ("EdgePatcher (acdc_lite/patching.py), resample ablation with the task's corrupted prompts. An effect is "
                "(full - patched) / (full - empty) of the mean metric. node_ablation_effects: one node ablated; "
                "pair_ablation_effects: two circuit nodes ablated together, interaction = pair - the two single effects; "
                "edges: removed_from_circuit = (metric of the circuit - metric of the circuit without that edge) / (full - "
                "empty), removed_from_full_model = "
                "removing only that edge from the whole model (path patching); circuit_faithfulness_nodes/edges: "
                "(metric - empty) / (full - empty) with every edge outside the circuit's nodes / outside its claimed edges "
                "ablated; outside_ablated_effect: every node outside the circuit ablated together (the 'not in the "
                "circuit' check); circuit_ablated_effect: the circuit's nodes ablated together"),
    }
    return truth, measurement
