"""Head detectors on a task's own prompts: a score per head and role, with a reported threshold.

Attention scores are means over the task's clean prompts of a head's attention probabilities:

- previous-token: from each position q >= 2 to q - 1.
- duplicate-token: from a token that occurred earlier to its earlier occurrences (queries with one).
- induction: from a token that occurred earlier to the tokens right after its earlier occurrences.
- s-inhibition: from the answer position to the foil's last occurrence in the prompt (in IOI, END -> S2).
- name-mover: from the answer position to the answer's occurrences minus to the foil's occurrences;
  the role also needs the head's OV output to push the answer: a positive direct logit attribution.
- successor: where the task lists ordinal token ids (`task.info["ordinal_ids"]`, in order): the share of
  ordinals t whose head OV circuit (embedding -> W_V W_O -> unembedding, among the ordinals) ranks t's
  successor first.

A head takes a role when its score reaches the detector's threshold and resample-ablating it alone loses
at least `min_effect` of the clean-minus-corrupt metric (the criterion the zoo cards were measured by);
when several roles qualify, the first in `ROLE_ORDER` (the most specific pattern) wins. Detectors are a
registry: `register` adds one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from acdc_lite import hooks
from acdc_lite.padding import forward
from acdc_lite.shape import model_info
from acdc_lite.task import Task

log = logging.getLogger(__name__)

MIN_EFFECT = 0.1  # share of the clean-minus-corrupt metric a head's single ablation must lose to take a role


@dataclass(frozen=True)
class HeadFacts:
    """What detectors read: the clean prompts, every layer's attention patterns and each head's
    direct logit attribution at the answer position."""

    model: nn.Module = field(repr=False)
    task: Task = field(repr=False)
    patterns: tuple[torch.Tensor, ...]  # per layer [N, heads, query, key]
    dla: torch.Tensor | None  # [layers, heads] mean direct contribution to the metric (None: metric not linear)


@dataclass(frozen=True)
class Detector:
    """A role and how to score it: `score(facts)` -> [layers, heads] in [-1, 1], or None where it does not apply."""

    name: str
    description: str
    threshold: float
    score: Callable[[HeadFacts], torch.Tensor | None] = field(repr=False, compare=False)
    needs_positive_dla: bool = False


DETECTORS: dict[str, Detector] = {}
ROLE_ORDER: list[str] = []  # priority when a head qualifies for several roles


def register(detector: Detector, before: str | None = None) -> Detector:
    """Add a detector (ahead of `before` in the role priority, else last)."""
    DETECTORS[detector.name] = detector
    if detector.name in ROLE_ORDER:
        ROLE_ORDER.remove(detector.name)
    ROLE_ORDER.insert(ROLE_ORDER.index(before) if before in ROLE_ORDER else len(ROLE_ORDER), detector.name)
    return detector


# ---- attention masks ------------------------------------------------------------------------
def _masked_mean(patterns: tuple[torch.Tensor, ...], mask: torch.Tensor, queries: torch.Tensor) -> torch.Tensor | None:
    """[layers, heads]: attention summed over keys where mask [N, q, k], averaged over queries [N, q] (None if none)."""
    if not queries.any():
        return None
    m, qmask = mask.float(), queries.float()
    out = [((pat * m[:, None]).sum(-1) * qmask[:, None]).sum((0, 2)) / qmask.sum() for pat in patterns]
    return torch.stack(out)


def _earlier_same(tokens: torch.Tensor) -> torch.Tensor:
    """[N, q, k]: key k < q holds the query's token."""
    p = tokens.shape[1]
    before = torch.ones(p, p, dtype=torch.bool).tril(-1)
    return (tokens[:, :, None] == tokens[:, None, :]) & before


def previous_token_score(f: HeadFacts) -> torch.Tensor:
    p = f.task.seq_len
    mask = torch.zeros(len(f.task), p, p, dtype=torch.bool)
    q = torch.arange(2, p)
    mask[:, q, q - 1] = True
    queries = torch.zeros(len(f.task), p, dtype=torch.bool)
    queries[:, 2:] = True
    return _masked_mean(f.patterns, mask, queries)


def duplicate_token_score(f: HeadFacts) -> torch.Tensor | None:
    mask = _earlier_same(f.task.clean)
    return _masked_mean(f.patterns, mask, mask.any(-1))


def induction_score(f: HeadFacts) -> torch.Tensor | None:
    same = _earlier_same(f.task.clean)  # [N, q, j]: j an earlier occurrence of q's token
    mask = torch.zeros_like(same)
    mask[:, :, 1:] = same[:, :, :-1]  # key j + 1
    mask &= torch.ones_like(same[0]).tril(-1)  # strictly before the query
    return _masked_mean(f.patterns, mask, mask.any(-1))


def _from_answer_pos(f: HeadFacts, keys: torch.Tensor) -> torch.Tensor | None:
    """[layers, heads]: attention from each prompt's answer position to keys [N, k], over prompts with any key."""
    n, p = f.task.clean.shape
    mask = torch.zeros(n, p, p, dtype=torch.bool)
    queries = torch.zeros(n, p, dtype=torch.bool)
    rows = torch.arange(n)
    before = torch.arange(p)[None, :] < f.task.answer_pos[:, None]
    keys = keys & before
    mask[rows, f.task.answer_pos] = keys
    queries[rows, f.task.answer_pos] = keys.any(-1)
    return _masked_mean(f.patterns, mask, queries)


def _holds(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[N, P]: position holds one of the row's ids [N, K] (-1 padded)."""
    return ((tokens[:, :, None] == ids[:, None, :]) & (ids[:, None, :] >= 0)).any(-1)


def s_inhibition_score(f: HeadFacts) -> torch.Tensor | None:
    if f.task.foils is None:
        return None
    held = _holds(f.task.clean, f.task.foils) & (torch.arange(f.task.seq_len)[None] < f.task.answer_pos[:, None])
    last = torch.where(held, torch.arange(f.task.seq_len)[None], -1).max(-1).values
    keys = torch.zeros_like(held)
    keys[torch.arange(len(keys))[last >= 0], last[last >= 0]] = True
    return _from_answer_pos(f, keys)


def name_mover_score(f: HeadFacts) -> torch.Tensor | None:
    n, p = f.task.clean.shape
    rows = torch.arange(n)
    before = torch.arange(p)[None] < f.task.answer_pos[:, None]
    answer = _holds(f.task.clean, f.task.answers) & before
    foil = _holds(f.task.clean, f.task.foils) & before if f.task.foils is not None else torch.zeros_like(answer)
    usable = answer.any(-1)  # prompts where the answer occurs before the answer position
    if not usable.any():
        return None

    def attention_to(keys: torch.Tensor) -> torch.Tensor:
        return torch.stack([(pat[rows, :, f.task.answer_pos] * keys[:, None].float()).sum(-1)[usable].mean(0)
                            for pat in f.patterns])

    return attention_to(answer) - attention_to(foil)


def ov_circuit(model: nn.Module, layer: int, head: int, ids: torch.Tensor) -> torch.Tensor:
    """[len(ids), len(ids)]: logits among `ids` that head (layer, head) writes when attending to each token of
    `ids` alone: W_E[t] (centred and scaled like a normalised input) -> W_V W_O -> W_U (no final norm)."""
    w_e = model.W_E.detach().float()[ids]
    if _has_norm(model):
        w_e = w_e - w_e.mean(-1, keepdim=True)
        w_e = w_e / w_e.pow(2).mean(-1, keepdim=True).sqrt()
    w_v, w_o = _head_weights(model, layer, head)
    return w_e @ w_v @ w_o @ model.W_U.detach().float()[:, ids]


def _has_norm(model: nn.Module) -> bool:
    from acdc_lite.transformer import SmallTransformer

    if isinstance(model, SmallTransformer):
        return model.cfg.normalization != "none"
    return getattr(model.cfg, "normalization_type", None) is not None


def _head_weights(model: nn.Module, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_V [d_model, d_head], W_O [d_head, d_model]) of one query head (its kv group's W_V under GQA)."""
    from acdc_lite.transformer import SmallTransformer

    if isinstance(model, SmallTransformer):
        attn = model.blocks[layer].attn
        return attn.W_V[head // model.cfg.kv_group].detach().float(), attn.W_O[head].detach().float()
    w_v, w_o = model.W_V[layer].detach().float(), model.W_O[layer].detach().float()
    kv = head * w_v.shape[0] // w_o.shape[0]
    return w_v[kv], w_o[head]


def successor_score(f: HeadFacts) -> torch.Tensor | None:
    ids = f.task.info.get("ordinal_ids")
    if not ids or len(ids) < 3:
        return None
    ids = torch.tensor(ids)
    info = model_info(f.model)
    out = torch.zeros(info.n_layers, info.n_heads)
    with torch.no_grad():
        for layer in range(info.n_layers):
            for head in range(info.n_heads):
                ov = ov_circuit(f.model, layer, head, ids)[:-1]  # the last ordinal has no successor
                out[layer, head] = (ov.argmax(-1) == torch.arange(1, len(ids))).float().mean()
    return out


register(Detector("previous-token", "attention from q to q - 1 (q >= 2)", 0.5, previous_token_score))
register(Detector("duplicate-token", "attention from a repeated token to its earlier occurrences", 0.5, duplicate_token_score))
register(Detector("induction", "attention from a repeated token to the token after its earlier occurrences", 0.5,
                  induction_score))
register(Detector("successor", "share of ordinal tokens whose OV circuit ranks the next ordinal first", 0.5, successor_score))
register(Detector("s-inhibition", "attention from the answer position to the foil's last occurrence", 0.5,
                  s_inhibition_score))
register(Detector("name-mover", "attention from the answer position to the answer minus to the foil, with a positive "
                  "direct logit attribution", 0.3, name_mover_score, needs_positive_dla=True))


# ---- running the detectors --------------------------------------------------------------------
@torch.no_grad()
def attention_patterns(model: nn.Module, tokens: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Per layer, the attention probabilities [b, head, query, key] on `tokens` [b, p] (float32, CPU);
    `attention_mask` [b, p] for padded prompts."""
    n_layers = model_info(model).n_layers
    store: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(x, hook):
            store[layer] = x.detach().float().cpu()
        return hook

    with model.hooks(fwd_hooks=[(hooks.attn_pattern(layer), keep(layer)) for layer in range(n_layers)]):
        forward(model, tokens, attention_mask)
    return tuple(store[layer] for layer in range(n_layers))


@torch.no_grad()
def head_ablation_effects(model: nn.Module, task: Task, metric: str | None = None, heads=None,
                          progress: bool = False) -> torch.Tensor:
    """[layers, heads]: share of the clean-minus-corrupt metric lost when one head's output (every position) is
    replaced by its output on the corrupted prompt (resample ablation). Only `heads` (node names) when given;
    NaN for the others, and everywhere when clean equals corrupt."""
    info = model_info(model)
    m = task.metric(metric or _linear_metric(task), model)
    idx = torch.arange(len(task))
    corrupt_results: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(x, hook):
            corrupt_results[layer] = x.detach().clone()
        return hook

    with model.hooks(fwd_hooks=[(hooks.head_result(layer), keep(layer)) for layer in range(info.n_layers)]):
        corrupt = float(m(forward(model, task.corrupt, task.attention_mask), idx).mean())
    clean = float(m(forward(model, task.clean, task.attention_mask), idx).mean())
    effects = torch.full((info.n_layers, info.n_heads), float("nan"))
    if clean == corrupt:
        return effects
    pairs = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    if heads is not None:
        wanted = set(map(str, heads))
        pairs = [(layer, head) for layer, head in pairs if f"a{layer}.h{head}" in wanted]
    for layer, head in tqdm(pairs, desc="head ablations", disable=not progress):
        def patch(x, hook, layer=layer, head=head):
            x = x.clone()
            x[:, :, head] = corrupt_results[layer][:, :, head]
            return x

        with model.hooks(fwd_hooks=[(hooks.head_result(layer), patch)]):
            effects[layer, head] = (clean - float(m(forward(model, task.clean, task.attention_mask), idx).mean())) / (clean - corrupt)
    return effects


def _linear_metric(task: Task) -> str:
    if task.multi_token:
        return "seq_logit_diff" if task.foil_seqs is not None else "seq_logprob"
    return "logit_diff" if task.foils is not None else "logprob"


@dataclass(frozen=True)
class HeadReport:
    """Detector scores ([layers, heads] per role; roles that do not apply are absent), single-head ablation
    effects, direct logit attribution and the thresholds used."""

    scores: dict[str, torch.Tensor]
    effects: torch.Tensor  # [layers, heads]
    dla: torch.Tensor | None  # [layers, heads]
    thresholds: dict[str, float]
    min_effect: float = MIN_EFFECT

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.effects.shape)

    def qualifies(self, role: str) -> torch.Tensor:
        """[layers, heads] bool: score >= threshold, effect >= min_effect (and a positive DLA where required)."""
        ok = (self.scores[role] >= self.thresholds[role]) & (self.effects >= self.min_effect)
        if DETECTORS[role].needs_positive_dla and self.dla is not None:
            ok &= self.dla > 0
        return ok

    def ranking(self, role: str) -> list[str]:
        """Every head, those that qualify for `role` first; each group by descending score x ablation effect
        (a head that shows the pattern and matters to the task; effects clamped to [0, 1], unmeasured ones 0)."""
        s, ok = self.scores[role], self.qualifies(role)
        weight = s * self.effects.nan_to_num(0.0).clamp(0.0, 1.0)
        heads = [(layer, head) for layer in range(s.shape[0]) for head in range(s.shape[1])]
        heads.sort(key=lambda lh: (not bool(ok[lh]), -float(weight[lh]), -float(s[lh])))
        return [f"a{layer}.h{head}" for layer, head in heads]

    def roles(self) -> dict[str, str]:
        """{head name: role} for every head that qualifies for a role (the first in ROLE_ORDER)."""
        out: dict[str, str] = {}
        for role in [r for r in ROLE_ORDER if r in self.scores]:
            for layer, head in self.qualifies(role).nonzero().tolist():
                out.setdefault(f"a{layer}.h{head}", role)
        return dict(sorted(out.items()))

    def to_frame(self):
        """One row per head: each detector's score, the ablation effect, the DLA and the role (or '')."""
        import pandas as pd

        roles = self.roles()
        rows = []
        for layer in range(self.shape[0]):
            for head in range(self.shape[1]):
                name = f"a{layer}.h{head}"
                row = {"head": name, "layer": layer, "index": head}
                row.update({role: round(float(s[layer, head]), 4) for role, s in self.scores.items()})
                row["ablation_effect"] = round(float(self.effects[layer, head]), 4)
                if self.dla is not None:
                    row["direct_logit_attribution"] = round(float(self.dla[layer, head]), 4)
                row["role"] = roles.get(name, "")
                rows.append(row)
        return pd.DataFrame(rows)

    def describe(self) -> dict:
        """How the roles were assigned (for circuit files and indexes)."""
        return {"detectors": {r: {"threshold": self.thresholds[r], "score": DETECTORS[r].description} for r in self.scores},
                "min_ablation_effect": self.min_effect, "order": [r for r in ROLE_ORDER if r in self.scores]}

    def figure(self, title: str | None = None):
        """One heatmap per detector (layers x heads, colour = score on a scale centred at zero); heads that take
        the role are boxed, the threshold is in each panel's title."""
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        from acdc_lite.explore.figures import diverging_heatmap

        roles = list(self.scores)
        if not roles:
            raise ValueError("no detector applies to this task: nothing to draw")
        fig = Figure(figsize=(3.6 * len(roles) + 0.6, 0.5 * self.shape[0] + 2.4), layout="constrained")
        axes = fig.subplots(1, len(roles), squeeze=False)[0]
        for ax, role in zip(axes, roles, strict=True):
            diverging_heatmap(self.scores[role].numpy(), title=f"{role} (threshold {self.thresholds[role]:g})",
                              xlabel="head", ylabel="layer", colorbar_label="score", ax=ax,
                              xticklabels=[str(h) for h in range(self.shape[1])],
                              yticklabels=[str(layer) for layer in range(self.shape[0])])
            for layer, head in self.qualifies(role).nonzero().tolist():
                ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor="#e7298a", linewidth=2.5))
        fig.suptitle(title or "head detectors (boxed: the head takes the role)")
        return fig


@torch.no_grad()
def detect_heads(model: nn.Module, task: Task, detectors: list[str] | None = None, min_effect: float = MIN_EFFECT,
                 thresholds: dict[str, float] | None = None, heads=None, progress: bool = False) -> HeadReport:
    """Run the detectors on the task's clean prompts (see module docstring). With `heads` (node names) only
    those heads are ablated (the others' effects are NaN and they take no role)."""
    from acdc_lite.explore.lens import direct_attribution

    names = detectors or list(DETECTORS)
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown head detectors {unknown}; choose from {', '.join(DETECTORS)}")
    info = model_info(model)
    try:
        dla = direct_attribution(model, task).head_matrix(info.n_layers, info.n_heads)
    except ValueError as e:
        log.info("no direct logit attribution: %s", e)
        dla = None
    facts = HeadFacts(model, task, attention_patterns(model, task.clean, task.attention_mask), dla)
    scores = {}
    for name in names:
        s = DETECTORS[name].score(facts)
        if s is None:
            log.info("head detector %s does not apply to task %s", name, task.name)
        else:
            scores[name] = s
    effects = head_ablation_effects(model, task, heads=heads, progress=progress)
    limits = {n: (thresholds or {}).get(n, DETECTORS[n].threshold) for n in scores}
    return HeadReport(scores, effects, dla, limits, min_effect)


def detect_roles(model: nn.Module, task: Task, heads=None) -> dict[str, str]:
    """{head name: role} from `detect_heads`, only for `heads` (node names) when given."""
    return detect_heads(model, task, heads=heads).roles()
