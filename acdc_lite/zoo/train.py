"""Train the zoo's models on CPU with a fixed seed, measure them, and write their directories.

    python -m acdc_lite.zoo.train induction-attn-2l          # re-train and overwrite the zoo directory
    python -m acdc_lite.zoo.train induction-llama-2l --out some/dir

`train(name, seed)` -> (hooked model, card). Training runs single-threaded, so a seed gives the same
weights on the same torch build.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from acdc_lite.graph import Node
from acdc_lite.models import load_model, model_info
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig
from acdc_lite.zoo import ZOO_DIR, measure
from acdc_lite.zoo.data import (
    ADDITION_WORDS,
    AdditionRecipe,
    DocstringRecipe,
    GreaterThanRecipe,
    IOIRecipe,
    SegmentRecipe,
    addition_batch,
    docstring_batch,
    docstring_vocab,
    greater_than_batch,
    greater_than_vocab,
    ioi_batch,
    ioi_vocab,
    repeated_random,
    segment_batch,
)

log = logging.getLogger(__name__)

N_TOKENS = 64  # vocabulary: id 0 is BOS, ids 1..63 are interchangeable random tokens
CARD_TASK = {"n_examples": 200, "seed": 0}
CARD_REPEATS = {"n": 100, "half": 20, "seed": 1}
CARD_IOI_TASK = {"n_examples": 200, "seed": 0}
TOLERANCE = {"accuracy": 0.02, "score": 0.02, "ablation_effect": 0.05}


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is built and trained."""

    description: str
    builder: str  # "small" | "llama" | "gpt2"
    arch: dict  # keyword arguments of the builder
    steps: int
    # the training language
    data: SegmentRecipe | IOIRecipe | GreaterThanRecipe | AdditionRecipe | DocstringRecipe = field(default_factory=SegmentRecipe)
    seq_len: int = 48
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 50
    head_penalty: float = 0.0  # weight of sum over heads of the mean norm of each head's output (group lasso)
    mlp_penalty: float = 0.0  # the same for each MLP's output
    card_circuit: bool = False  # induction and IOI cards: ground truth by patching (circuit_measurements), MLPs and edges
    embed_std: float | None = None  # gpt2 only: initialise token and position embeddings with this std (GPT-2's is 0.02)


RECIPES: dict[str, Recipe] = {
    "induction-attn-2l": Recipe(
        description="Attention-only 2-layer transformer (learned positions, no LayerNorm) that does induction "
                    "with a previous-token head in layer 0 and induction heads in layer 1 (see ground_truth).",
        builder="small",
        arch={"n_layers": 2, "n_heads": 4, "d_model": 64, "d_head": 16, "n_ctx": 48},
        steps=2500,
        data=SegmentRecipe(min_seg=4, max_seg=10, p_gap=0.5, max_gap=12),
        # 0.035 silences the layer-0 heads that are not the previous-token head (joint ablation effect
        # 0.05; at 0.01 it was 0.25, so the ground-truth heads alone were only 75% faithful)
        head_penalty=0.035,
    ),
    # Without penalties (1500 steps) a layer-0 head outside the card carried 20% of the logit difference; with a
    # head penalty 0.02 and an MLP penalty 0.03 over 3000 steps every node outside the circuit is at <= 0.001.
    "induction-llama-2l": Recipe(
        description="2-layer Llama-architecture model (rotary positions, RMSNorm, gated MLP) trained on repeated "
                    "random segments with a head and an MLP penalty; previous-token and second-previous-token heads in "
                    "layer 0, four induction heads and the MLP in layer 1 (see ground_truth).",
        builder="llama",
        arch={"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "intermediate_size": 128},
        steps=3000,
        data=SegmentRecipe(min_seg=4, max_seg=10, p_gap=0.5, max_gap=12),
        head_penalty=0.02,
        mlp_penalty=0.03,
        card_circuit=True,
    ),
    # GPT-2's architecture with GPT-2's initialisation (embeddings std 0.02, tied unembedding) does not learn
    # induction on this data: layer 0 attends to a window 3-9 tokens back and layer 1 matches contexts
    # built by layer 0 (previous-token scores <= 0.06, induction <= 0.04, 60% accuracy; tied or untied alike;
    # also with lr 1e-3, 3000 steps, sinusoidal position init, 96-token sequences, or distinct tokens).
    # Measured cause: layer 0's attention output grows to 6-15x the token embedding's norm (mean norms
    # 11.4 vs 0.74 tied, 4.4 vs 0.79 untied), so after layer 1's LayerNorm the current token is a small
    # part of the query input and an induction head (query = current token) does not form. Even with a
    # previous-token head forced by an auxiliary skip-bigram task, layer 1 matched layer-0 outputs on both
    # sides (query: the previous token) instead. Embeddings initialised 15x larger (std 0.3; norms 2.5 vs
    # 7.9 after training) with an untied unembedding (tied, large embeddings make large initial logits and
    # nothing was learned in 2000 steps) give a clean previous-token head and four induction heads.
    # Seed-sensitive: seed 0 is shipped; with seeds 1 and 2 the same recipe reached only a partial
    # circuit (seed 1: previous-token 0.30, induction 0.39, accuracy 0.50) or none (seed 2) in 2000 steps.
    # Without penalties two layer-0 heads outside the card carried 24% and 38% of the logit difference and a
    # third 10%. Head and MLP penalties (2000 steps): 0.02/0.02 learned no induction (accuracy 0.41); 0.005/0.005
    # and 0.01/0.01 learned it but left a head and both MLPs at 4-8%; 0.01/0.03 over 3000 steps leaves every
    # node outside the circuit at <= 0.001.
    "induction-gpt2-2l": Recipe(
        description="2-layer GPT-2-architecture model (GPT2LMHeadModel: learned positions, LayerNorm, MLP; untied "
                    "unembedding, embeddings initialised with std 0.3) trained on repeated random segments with a head "
                    "and an MLP penalty; previous-token and second-previous-token heads in layer 0, four induction "
                    "heads in layer 1, the MLPs unused (see ground_truth).",
        builder="gpt2",
        arch={"n_layer": 2, "n_head": 4, "n_embd": 64, "tie_word_embeddings": False},
        steps=3000,
        data=SegmentRecipe(min_seg=4, max_seg=10, p_gap=0.7, max_gap=20),
        embed_std=0.3,
        head_penalty=0.01,
        mlp_penalty=0.03,
        card_circuit=True,
    ),
    # Attention-only on purpose: with MLPs and LayerNorm (d_mlp 256, same data, 3000 steps, 50 s) the model
    # also reached accuracy 1.0, but its decisive head (a0.h0, ablation effect 0.95) attends from END to
    # IO or S2 depending on which name it is, and the rest is left to the MLPs: no readable circuit.
    "ioi-attn-2l": Recipe(
        description="Attention-only 2-layer transformer (learned positions, no LayerNorm) trained on a word-level IOI "
                    "language built from tasks/ioi.py's names, places, objects and templates; the built-in ioi task "
                    "runs on its vocabulary. Seed 0, as measured: a layer-0 head attends from END to S2 (carries the "
                    "subject) and steers two layer-1 name movers (END -> IO) away from S1; a layer-1 head attends from "
                    "END to S2 and writes against the S logit directly; see ground_truth and measurement.",
        builder="small",
        arch={"n_layers": 2, "n_heads": 4, "d_model": 64, "d_head": 16, "n_ctx": 24},
        steps=3000,
        data=IOIRecipe(),
        seq_len=24,
        # Without a head penalty four heads outside the card carried 8-16% of the logit difference each;
        # 0.01 left two heads at 4-6% (the node circuit only 88% faithful); 0.02 and 0.03 gave up the name movers
        # for one layer-1 head that suppresses S (END -> S2); 0.015 keeps name movers and silences the rest (<= 9%).
        head_penalty=0.015,
        card_circuit=True,
    ),
    "greater-than-gpt2-2l": Recipe(
        description="2-layer GPT-2-architecture model (GPT2LMHeadModel, untied unembedding) trained on a word-level "
                    "greater-than language ('The war lasted from the year 17 32 to the year 17 ZZ', ZZ a later year); its "
                    "tokenizer splits '1732' into '17' + '32', so the built-in greater-than task runs on it as written "
                    "for GPT-2. See ground_truth and measurement.",
        builder="gpt2",
        arch={"n_layer": 2, "n_head": 4, "n_embd": 64, "tie_word_embeddings": False},
        steps=2000,
        data=GreaterThanRecipe(),
        seq_len=20,
        head_penalty=0.02,
        mlp_penalty=0.02,
    ),
    "addition-llama-2l": Recipe(
        description="2-layer Llama-architecture model (rotary positions, RMSNorm, gated MLP) trained on two-digit "
                    "addition written digit by digit ('What is 5 7 + 1 2 ? Answer : 6 9'); its tokenizer splits numbers "
                    "into digits, so the built-in addition task's answer is the sum's first digit. See ground_truth and "
                    "measurement.",
        builder="llama",
        arch={"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "intermediate_size": 256},
        # head penalty 0.02 (3000 steps) left a0.h1 at 6% outside the card (node circuit 0.86 faithful); 0.035 and
        # 0.05 left a layer-1 head at 4-8%, 0.07 put two nodes at 0.09-0.10; 0.05 over 6000 steps silences every
        # layer-1 head (node circuit 1.00), but held-out carry pairs drop to 91% right (99% before)
        steps=6000,
        data=AdditionRecipe(),
        seq_len=16,
        head_penalty=0.05,
        mlp_penalty=0.02,
    ),
    # With an MLP penalty 0.02 over 1500 steps a0.h3 kept 7% of the logit difference, outside the card (the node
    # circuit 0.885 faithful); 0.03 over 3000 steps puts a0.h3 into the circuit as a third previous-token head
    # (every head is used; m0 is the only node outside, at 0.002). A head penalty of 0.03 gave the same circuit.
    "induction-llama-gqa-2l": Recipe(
        description="2-layer Llama-architecture model with grouped-query attention (4 query heads, 2 key/value heads) "
                    "trained on repeated random segments with a head and an MLP penalty; previous-token and "
                    "second-previous-token heads in layer 0, four induction heads and the MLP in layer 1; every head "
                    "is in the circuit, m0 is not (see ground_truth).",
        builder="llama",
        arch={"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 48,
              "intermediate_size": 128},
        steps=3000,
        data=SegmentRecipe(min_seg=4, max_seg=10, p_gap=0.5, max_gap=12),
        head_penalty=0.02,
        mlp_penalty=0.03,
        card_circuit=True,
    ),
    "ioi-attn-3l": Recipe(
        description="Attention-only 3-layer transformer (learned positions, no LayerNorm) trained on the word-level IOI "
                    "language of ioi-attn-2l with a head penalty, so that heads the task does not need fall silent; the "
                    "built-in ioi task runs on its vocabulary. See ground_truth and measurement.",
        builder="small",
        arch={"n_layers": 3, "n_heads": 4, "d_model": 64, "d_head": 16, "n_ctx": 24},
        steps=3000,
        data=IOIRecipe(),
        seq_len=24,
        head_penalty=0.03,
        card_circuit=True,
    ),
    "docstring-attn-2l": Recipe(
        description="Attention-only 2-layer transformer (learned positions, no LayerNorm) trained on word-level Python "
                    "definitions with docstrings (2-6 arguments, any number documented, varying description lengths); "
                    "the built-in docstring task runs on its vocabulary. See ground_truth and measurement.",
        builder="small",
        arch={"n_layers": 2, "n_heads": 4, "d_model": 64, "d_head": 16, "n_ctx": 56},
        steps=1200,
        data=DocstringRecipe(),
        seq_len=56,
        # 0.02 left two layer-1 heads outside the card at 3% each (a0.h2 in it at exactly 0.10); 0.035 leaves every
        # head outside at 0.002 and the node circuit 1.00 faithful
        head_penalty=0.035,
    ),
}


@dataclass(frozen=True)
class Language:
    """A training language: the task it teaches, its words, how its tokenizer splits text, its batches."""

    task: str
    words: Callable[[], list[str]]
    split: str  # how the saved tokenizer splits text (see `word_tokenizer`)
    batch: Callable[[Recipe, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    vocabulary: Callable[[], str]  # one line for the card


def _ioi_vocabulary() -> str:
    ioi = measure.builtin_task_module("ioi")
    return (f"{len(ioi_vocab())} words (config.json lists them): <bos>, <pad>, the template words, then the "
            f"{len(ioi.NAMES)} names, {len(ioi.PLACES)} places and {len(ioi.OBJECTS)} objects of tasks/ioi.py")


LANGUAGES: dict[type, Language] = {
    SegmentRecipe: Language(
        "induction", lambda: ["<bos>"] + [f"t{i}" for i in range(1, N_TOKENS)], "words",
        lambda r, g: segment_batch(r.batch_size, r.seq_len, N_TOKENS, r.data, g),
        lambda: "id 0 is BOS; ids 1-63 are interchangeable random tokens"),
    IOIRecipe: Language("ioi", ioi_vocab, "words", lambda r, g: ioi_batch(r.batch_size, r.seq_len, r.data, g), _ioi_vocabulary),
    GreaterThanRecipe: Language(
        "greater-than", greater_than_vocab, "year-pairs", lambda r, g: greater_than_batch(r.batch_size, r.seq_len, r.data, g),
        lambda: (f"{len(greater_than_vocab())} words (tokenizer.json): <bos>, <pad>, the template and opening words, the "
                 "nouns of tasks/greater_than.py and the two-digit years 00..99; the tokenizer splits digit runs into "
                 "pairs, so '1732' is '17' + '32' as in GPT-2's tokenizer")),
    AdditionRecipe: Language(
        "addition", lambda: list(ADDITION_WORDS), "digits", lambda r, g: addition_batch(r.batch_size, r.seq_len, r.data, g),
        lambda: (f"{len(ADDITION_WORDS)} tokens (tokenizer.json): <bos>, <pad>, What is + ? Answer : and the digits 0-9; "
                 "the tokenizer splits punctuation off words and numbers into single digits")),
    DocstringRecipe: Language(
        "docstring", docstring_vocab, "words", lambda r, g: docstring_batch(r.batch_size, r.seq_len, r.data, g),
        lambda: (f"{len(docstring_vocab())} words (config.json lists them): <bos>, <pad>, the fixed words of "
                 "tasks/docstring.py (def ( self , ) : \"\"\" :param), its argument names, description words and "
                 "function names")),
}


def language(recipe: Recipe) -> Language:
    return LANGUAGES[type(recipe.data)]


def card_kind(recipe: Recipe) -> str:
    """The CARD_MEASURES entry that measures this recipe's model."""
    task = language(recipe).task
    return f"{task}-circuit" if recipe.card_circuit and task in ("induction", "ioi") else task


def build_model(recipe: Recipe, name: str) -> nn.Module:
    """A freshly initialised model (uses torch's global RNG)."""
    words = language(recipe).words()
    if recipe.builder == "small":
        cfg = SmallTransformerConfig(d_vocab=len(words), vocab=words, name=name, **recipe.arch)
        return SmallTransformer(cfg)
    if recipe.builder == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=len(words), max_position_embeddings=recipe.seq_len, bos_token_id=0, eos_token_id=0,
                          tie_word_embeddings=False, **recipe.arch)
        return LlamaForCausalLM(cfg)
    if recipe.builder == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=len(words), n_positions=recipe.seq_len, bos_token_id=0, eos_token_id=0,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **recipe.arch)
        model = GPT2LMHeadModel(cfg)
        if recipe.embed_std is not None:
            with torch.no_grad():
                model.transformer.wte.weight.normal_(0.0, recipe.embed_std)
                model.transformer.wpe.weight.normal_(0.0, recipe.embed_std)
        return model
    raise ValueError(f"unknown builder {recipe.builder!r}")


def _logits_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if isinstance(model, SmallTransformer):
        return model
    return lambda tokens: model(tokens).logits


def _norm_hooks(model: nn.Module, heads: list[torch.Tensor], mlps: list[torch.Tensor]) -> list:
    """Forward hooks appending each layer's per-head mean output norm [heads] to `heads` and each MLP's mean
    output norm [1] to `mlps` (a None list is not recorded); returns their handles."""
    def mean_norm(store):
        return lambda mod, args, out: store.append(out.norm(dim=-1).mean().reshape(1))

    if isinstance(model, SmallTransformer):
        handles = [] if heads is None else [b.attn.hook_result.register_forward_hook(
            lambda mod, args, out: heads.append(out.norm(dim=-1).mean(dim=(0, 1)))) for b in model.blocks]
        if mlps is not None:
            handles += [b.hook_mlp_out.register_forward_hook(mean_norm(mlps)) for b in model.blocks]
        return handles
    cfg = model.config
    n_heads = cfg.num_attention_heads
    handles = []
    if cfg.model_type == "llama":
        projections = [(layer.self_attn.o_proj, lambda w: w.T) for layer in model.model.layers]
        mlp_modules = [layer.mlp for layer in model.model.layers]
    else:  # gpt2: Conv1D weight is [in, out]
        projections = [(block.attn.c_proj, lambda w: w) for block in model.transformer.h]
        mlp_modules = [block.mlp for block in model.transformer.h]
    for proj, as_in_out in projections if heads is not None else ():
        def hook(mod, args, as_in_out=as_in_out):
            z = args[0].unflatten(-1, (n_heads, -1))  # [b, p, h, d_head]
            w = as_in_out(mod.weight).unflatten(0, (n_heads, -1))  # [h, d_head, d_model]
            heads.append(torch.einsum("bphe,hed->bphd", z, w).norm(dim=-1).mean(dim=(0, 1)))
        handles.append(proj.register_forward_pre_hook(hook))
    if mlps is not None:
        handles += [m.register_forward_hook(mean_norm(mlps)) for m in mlp_modules]
    return handles


def fit(model: nn.Module, recipe: Recipe, seed: int) -> dict:
    """Train `model` in place; returns training facts (steps, seconds, final loss)."""
    g = torch.Generator().manual_seed(seed + 1)
    forward = _logits_fn(model)
    head_norms: list[torch.Tensor] | None = [] if recipe.head_penalty else None
    mlp_norms: list[torch.Tensor] | None = [] if recipe.mlp_penalty else None
    handles = _norm_hooks(model, head_norms, mlp_norms)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe.warmup) * max(0.0, 1 - s / recipe.steps) ** 0.5)
    model.train()
    start = time.perf_counter()
    losses = []
    try:
        for step in range(recipe.steps):
            tokens, weights = language(recipe).batch(recipe, g)
            for store in (head_norms, mlp_norms):
                if store is not None:
                    store.clear()
            logits = forward(tokens)[:, :-1]
            loss_tok = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
            ce = (loss_tok * weights.reshape(-1)).sum() / weights.sum()
            loss = ce
            if head_norms:
                loss = loss + recipe.head_penalty * torch.cat(head_norms).sum()
            if mlp_norms:
                loss = loss + recipe.mlp_penalty * torch.cat(mlp_norms).sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(ce.detach()))
            if step % 250 == 0 or step == recipe.steps - 1:
                log.info("step %d loss %.4f", step, losses[-1])
    finally:
        for h in handles:
            h.remove()
    model.eval()
    return {"steps": recipe.steps, "seconds": round(time.perf_counter() - start, 1),
            "final_weighted_ce": round(sum(losses[-50:]) / len(losses[-50:]), 4)}


def measure_card(model: nn.Module) -> dict:
    """Task metrics, head scores, ablation effects and the ground-truth heads of a zoo induction model."""
    induction = measure.builtin_task_module("induction")
    task = induction.build(model, **CARD_TASK)
    info = model_info(model)
    reps = repeated_random(CARD_REPEATS["n"], CARD_REPEATS["half"], info.d_vocab, CARD_REPEATS["seed"])
    prev = measure.prev_token_scores(model, reps)
    ind = measure.induction_scores(model, reps, CARD_REPEATS["half"])
    effects = measure.head_ablation_effects(model, task)

    def r(t):
        return [[round(float(v), 3) for v in row] for row in t]

    truth = measure.classify_heads(prev, ind, effects)
    all_heads = [f"a{layer}.h{head}" for layer in range(info.n_layers) for head in range(info.n_heads)]
    groups = {cls: [t["head"] for t in truth if t["class"] == cls] for cls in ("previous-token", "induction")}
    groups["ground truth"] = sorted({t["head"] for t in truth})
    groups["all other heads"] = [h for h in all_heads if h not in groups["ground truth"]]
    joint = {k: round(measure.joint_ablation_effect(model, task, v), 3) for k, v in groups.items() if v}
    return {
        "task": {"name": "induction", **CARD_TASK, **{k: round(v, 3) for k, v in measure.task_metrics(model, task).items()}},
        "ground_truth": truth,
        "measurement": {
            "criterion": "a head is ground truth if its attention score >= 0.5 and resample-ablating it alone "
                         "loses >= 10% of the clean-minus-corrupt logit difference on the induction task",
            "scores_on": f"{CARD_REPEATS['n']} sequences BOS R R, R = {CARD_REPEATS['half']} random tokens, seed {CARD_REPEATS['seed']}",
            "previous_token_score": "mean attention from position q to q - 1, q >= 2",
            "induction_score": "mean attention from a second-copy token to the token after its first occurrence",
            "ablation_effect": "(clean - patched) / (clean - corrupt) logit difference, one head's output "
                               "replaced at every position by its output on the corrupted prompt",
            "previous_token_scores": r(prev),
            "induction_scores": r(ind),
            "ablation_effects": r(effects),
            "joint_ablation_effects": joint,
            "tolerance": TOLERANCE,
        },
    }


def _rounded(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 3) for v in row] for row in t]


def measure_ioi_card(model: nn.Module) -> dict:
    """Task metrics, IOI attention scores, ablation effects and the measured head classes of an IOI zoo model."""
    task = measure.builtin_task_module("ioi").build(model, **CARD_IOI_TASK)
    info = model_info(model)
    scores = measure.ioi_attention_scores(model, task)
    effects = measure.head_ablation_effects(model, task)
    truth = measure.classify_ioi_heads(scores, effects)
    all_heads = [f"a{layer}.h{head}" for layer in range(info.n_layers) for head in range(info.n_heads)]
    groups = {cls: [t["head"] for t in truth if t["class"] == cls] for cls in measure.IOI_CLASSES}
    groups = {k: v for k, v in groups.items() if v}
    groups["ground truth"] = sorted({t["head"] for t in truth})
    groups["all other heads"] = [h for h in all_heads if h not in groups["ground truth"]]
    joint = {k: round(measure.joint_ablation_effect(model, task, v), 3) for k, v in groups.items() if v}
    dla = measure.ioi_direct_logit_attribution(model, task)
    composition = {}
    first_mover = min((Node.parse(h).layer for h in groups.get("name-mover", [])), default=0)
    steering = [h for h in groups.get("s-inhibition", []) if Node.parse(h).layer < first_mover]  # earlier layers only
    if steering:
        ablated = measure.ioi_attention_scores(model, task, ablate=steering)
        composition = {"ablated": steering, "name_movers": {}}
        for h in groups["name-mover"]:
            node = Node.parse(h)
            at = (node.layer, node.head)
            composition["name_movers"][h] = {k: [round(float(scores[k][at]), 3), round(float(ablated[k][at]), 3)]
                                             for k in ("end_to_io", "end_to_s1", "end_to_s2")}
    return {
        "task": {"name": "ioi", **CARD_IOI_TASK, **{k: round(v, 3) for k, v in measure.task_metrics(model, task).items()}},
        "ground_truth": truth,
        "measurement": {
            "criterion": "a head is in a class if the class's attention score >= 0.5 and resample-ablating it alone loses "
                         ">= 10% of the clean-minus-corrupt IO - S logit difference; a name mover must also attend to IO "
                         "at least twice as much as to S1 and S2 together. Class names follow the GPT-2 IOI circuit; "
                         "here they mean only the attention pattern stated in classes",
            "scores_on": f"the clean prompts of the ioi task ({CARD_IOI_TASK['n_examples']} examples, seed "
                         f"{CARD_IOI_TASK['seed']}); END is the last position, IO the indirect object's mention, "
                         "S1 and S2 the subject's two mentions",
            "classes": {cls: key for cls, key in measure.IOI_CLASSES.items()},
            "ablation_effect": "(clean - patched) / (clean - corrupt) IO - S logit difference, one head's output replaced "
                               "at every position by its output on the corrupted (ABC) prompt",
            **{f"{k}_scores": _rounded(v) for k, v in scores.items()},
            "ablation_effects": _rounded(effects),
            "joint_ablation_effects": joint,
            "composition": composition,
            "composition_means": "name movers' attention [intact, with the s-inhibition heads of earlier layers resample-ablated]",
            **({"direct_logit_attribution": _rounded(dla),
                "direct_logit_attribution_means": "mean over clean prompts of each head's output at END dotted with "
                                                  "W_U[IO] - W_U[S] (the model has no final normalisation, so this is "
                                                  "exactly the logit difference the head writes directly)"}
               if dla is not None else {}),
            "tolerance": {**TOLERANCE, "logit": 0.05},
        },
    }


CARD_TEXT_TASK = {"n_examples": 200, "seed": 0}


def _task_card(task, metrics: dict, truth: list[dict], circuit: dict, extra: dict) -> dict:
    return {"task": {"name": task.name, **CARD_TEXT_TASK, **{k: round(v, 3) for k, v in metrics.items()}},
            "ground_truth": truth,
            "measurement": {**extra, "circuit": circuit, "tolerance": TOLERANCE}}


@torch.no_grad()
def _greater_than_prompts(model: nn.Module, held_out: bool) -> dict[str, float]:
    """Mean prob diff and accuracy (the most likely year is after YY) over every (noun, YY) prompt of the task's
    template that was (not) held out of training, written with the model's tokenizer."""
    from acdc_lite.task import Vocabulary
    from acdc_lite.zoo.data import greater_than_held_out

    gt = measure.builtin_task_module("greater_than")
    vocab = Vocabulary.of(model)
    years = torch.tensor([vocab.single(f"{y:02d}") for y in range(100)])
    bos = [vocab.bos] if vocab.bos is not None else []
    rows = [(bos + vocab.encode(f"The {noun} lasted from the year 17{yy:02d} to the year 17"), yy)
            for k, noun in enumerate(gt.NOUNS) for yy in range(gt.FIRST_YY, gt.LAST_YY + 1)
            if greater_than_held_out(k, yy) == held_out]
    probs = model(torch.tensor([r[0] for r in rows]))[:, -1].softmax(-1)[:, years]  # [N, 100]
    yy = torch.tensor([r[1] for r in rows])
    later = torch.arange(100)[None, :] > yy[:, None]
    return {"n": len(rows), "prob_diff": float(((probs * later).sum(1) - (probs * ~later).sum(1)).mean()),
            "accuracy": float((probs.argmax(1) > yy).float().mean())}


def measure_greater_than_card(model: nn.Module) -> dict:
    """Greater-than card: prob diff and accuracy (seen and held-out prompts), END->YY attention, node and edge patching."""
    gt = measure.builtin_task_module("greater_than")
    task = gt.build(model, **CARD_TEXT_TASK)
    pos = task.info["year_position"]
    n = len(task)
    end = torch.full((n,), task.seq_len - 1)
    scores = {"year-reader": measure.attention_to(model, task.clean, end, torch.full((n,), pos)),
              "century-reader": measure.attention_to(model, task.clean, end, torch.full((n,), pos - 1))}
    probe = measure.CircuitProbe(model, task)
    truth, circuit = measure.circuit_measurements(probe, {"year-reader": scores["year-reader"]})
    metric = task.metric("prob_diff")
    idx = torch.arange(n)
    with torch.no_grad():
        clean, corrupt = model(task.clean), model(task.corrupt)
    metrics = {"prob_diff_clean": float(metric(clean, idx).mean()), "prob_diff_corrupt": float(metric(corrupt, idx).mean())}
    mlp_direct = {e["edge"]: e["removed_from_full_model"] for e in circuit["edges"] if e["edge"].endswith("->logits")}
    return _task_card(task, metrics, truth, circuit, {
        "prompts_seen_in_training": _greater_than_prompts(model, held_out=False),
        "prompts_held_out": _greater_than_prompts(model, held_out=True),
        "prompts_means": "every (noun, YY) prompt of the task's template, YY 02..98: mean P(later) - P(earlier) and the "
                         "share whose most likely year is after YY",
        "attention_scores": {k: _rounded(v) for k, v in scores.items()},
        "attention_means": "mean attention from the last position (the second '17') to the YY token (year-reader) and "
                           "to the first '17' (century-reader) on the clean task prompts",
        "direct_effects": mlp_direct,
        "direct_effects_means": "claimed X->logits edges: share of the prob diff lost when only that edge is resample-"
                                "ablated (what the component writes straight into the year logits)",
    })


def _digits_of(task) -> torch.Tensor:
    return torch.tensor(task.info["operands"])  # [N, 2]


@torch.no_grad()
def _addition_prompts(model: nn.Module) -> dict[str, dict[str, float]]:
    """First-answer-token accuracy over all 8,100 operand pairs, split by held out / seen and carry / no carry."""
    from acdc_lite.task import Vocabulary
    from acdc_lite.zoo.data import addition_held_out

    vocab = Vocabulary.of(model)
    bos = [vocab.bos] if vocab.bos is not None else []
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    tokens = torch.tensor([bos + vocab.encode(f"What is {a} + {b}? Answer:") for a, b in pairs])
    first = torch.tensor([vocab.encode(str(a + b))[0] for a, b in pairs])
    right = torch.cat([model(tokens[i:i + 512])[:, -1].argmax(-1) for i in range(0, len(tokens), 512)]) == first
    out = {}
    for split, keep in (("seen", lambda a, b: not addition_held_out(a, b)), ("held_out", addition_held_out)):
        for carry_name, carry in (("carry", True), ("no_carry", False)):
            sel = torch.tensor([keep(a, b) and ((a % 10 + b % 10) >= 10) == carry for a, b in pairs])
            out[f"{split}_{carry_name}"] = {"n": int(sel.sum()), "accuracy": round(float(right[sel].float().mean()), 4)}
    return out


def measure_addition_card(model: nn.Module) -> dict:
    """Addition card: accuracy by split and carry, END->digit attention, node and edge patching (also per carry split)."""
    task = measure.builtin_task_module("addition").build(model, **CARD_TEXT_TASK)
    n = len(task)
    # BOS What is A1 A0 + B1 B0 ? Answer : -> digit positions from the end of the prompt
    p = task.seq_len
    at = {"A1": p - 8, "A0": p - 7, "B1": p - 5, "B0": p - 4}
    end = torch.full((n,), p - 1)
    att = {k: measure.attention_to(model, task.clean, end, torch.full((n,), v)) for k, v in at.items()}
    scores = {"tens-reader": att["A1"] + att["B1"], "units-reader": att["A0"] + att["B0"]}
    probe = measure.CircuitProbe(model, task)
    truth, circuit = measure.circuit_measurements(probe, scores)
    ops = _digits_of(task)
    carry = (ops[:, 0] % 10 + ops[:, 1] % 10) >= 10
    by_carry = {}
    for name, sel in (("carry", carry), ("no_carry", ~carry)):
        if int(sel.sum()) < 2:
            continue
        sub = dataclasses.replace(task.subset(sel), info={})  # subset keeps the attention mask in step
        sub_probe = measure.CircuitProbe(model, sub)
        by_carry[name] = {"n": int(sel.sum()), "logit_diff_clean": round(sub_probe.full, 3),
                          "logit_diff_corrupt": round(sub_probe.empty, 3),
                          "node_ablation_effects": {k: round(v, 3) for k, v in sub_probe.node_effects().items()}}
    return _task_card(task, measure.task_metrics(model, task), truth, circuit, {
        "first_token_accuracy": _addition_prompts(model),
        "first_token_accuracy_means": "share of operand pairs (all 8,100 of 10..99 x 10..99) whose most likely next token "
                                      "after 'Answer:' is the sum's first digit; held out = never in training; carry = "
                                      "the units digits sum to 10 or more",
        "attention_scores": {k: _rounded(v) for k, v in {**scores, **{f"end_to_{k}": v for k, v in att.items()}}.items()},
        "attention_means": "mean attention from the last position (':') on the clean task prompts to the operands' tens "
                           "digits A1 + B1 (tens-reader) and units digits A0 + B0 (units-reader), and to each digit",
        "by_carry": by_carry,
        "by_carry_means": "the task's prompts split by whether the clean operands' units digits carry; node ablation "
                          "effects measured on each split alone (same method as circuit.node_ablation_effects)",
    })


def measure_docstring_card(model: nn.Module) -> dict:
    """Docstring card: the task metric, attention from ':param' to the answer and to the last documented name,
    previous-argument attention in the definition, node and edge patching."""
    task = measure.builtin_task_module("docstring").build(model, **CARD_TEXT_TASK)
    n, p = len(task), task.seq_len
    rows = torch.arange(n)
    answer_pos = (task.clean == task.answers[:, :1]).float().argmax(1)  # the answer's one mention, in the definition
    param = model.cfg.vocab.index(":param")
    params = [(row == param).nonzero().flatten() for row in task.clean]
    last_doc = torch.stack([q[-2] + 1 for q in params])  # the name after the last complete ':param'
    end = torch.full((n,), p - 1)
    first_arg = int((task.clean[0] == model.cfg.vocab.index("self")).nonzero()[0]) + 2
    n_args = task.info["n_args"]
    pats = measure.attention_patterns(model, task.clean)
    args = torch.arange(first_arg + 2, first_arg + 2 * n_args, 2)  # def arguments after the first
    prev_arg = torch.stack([pat[:, :, args, args - 2].mean(dim=(0, 2)) for pat in pats])
    scores = {"answer-copier": torch.stack([pat[rows, :, end, answer_pos].mean(0) for pat in pats]),
              "last-name-reader": torch.stack([pat[rows, :, end, last_doc].mean(0) for pat in pats]),
              "previous-argument": prev_arg}
    probe = measure.CircuitProbe(model, task)
    truth, circuit = measure.circuit_measurements(probe, scores)
    metrics = measure.task_metrics(model, task)
    with torch.no_grad():
        clean, corrupt = model(task.clean), model(task.corrupt)
    ldm = task.metric("logit_diff_max", model=model)
    metrics = {"logit_diff_max_clean": float(ldm(clean, rows).mean()), "logit_diff_max_corrupt": float(ldm(corrupt, rows).mean()),
               "accuracy": metrics["accuracy"], "accuracy_corrupt": metrics["accuracy_corrupt"],
               "answer_beats_every_wrong_name": float((ldm(clean, rows) > 0).float().mean())}
    return _task_card(task, metrics, truth, circuit, {
        "attention_scores": {k: _rounded(v) for k, v in scores.items()},
        "attention_means": "mean attention on the clean task prompts from the last ':param' to the answer's mention in "
                           "the definition (answer-copier) and to the last documented name (last-name-reader), and from "
                           "each definition argument after the first to the argument before it (previous-argument)",
    })


def measure_ioi_circuit_card(model: nn.Module) -> dict:
    """An IOI card (measure_ioi_card) whose ground truth is measured by patching: heads (and MLPs) by their ablation
    effect, classed by the IOI attention scores, with pair, edge and outside-the-circuit measurements."""
    card = measure_ioi_card(model)
    task = measure.builtin_task_module("ioi").build(model, **CARD_IOI_TASK)
    scores = measure.ioi_attention_scores(model, task)
    # a name mover must attend to IO at least twice as much as to S1 and S2 together (as in classify_ioi_heads)
    mover = torch.where(scores["end_to_io"] >= 2 * (scores["end_to_s1"] + scores["end_to_s2"]), scores["end_to_io"], 0.0)
    classes = {"name-mover": mover, "s-inhibition": scores["end_to_s2"], "duplicate-token": scores["s2_to_s1"],
               "previous-token": scores["previous_token"]}
    truth, circuit = measure.circuit_measurements(measure.CircuitProbe(model, task, metric="logit_diff"), classes)
    card["ground_truth"] = truth
    card["measurement"]["circuit"] = circuit
    card["measurement"]["criterion"] = circuit["criterion"] + "; a name mover must also attend to IO at least twice as " \
                                                              "much as to S1 and S2 together"
    return card


def measure_induction_circuit_card(model: nn.Module) -> dict:
    """An induction card (measure_card) whose ground truth also names MLPs and claims edges, measured by patching."""
    card = measure_card(model)
    task = measure.builtin_task_module("induction").build(model, **CARD_TASK)
    info = model_info(model)
    reps = repeated_random(CARD_REPEATS["n"], CARD_REPEATS["half"], info.d_vocab, CARD_REPEATS["seed"])
    pats = measure.attention_patterns(model, reps)
    scores = {"previous-token": measure.offset_scores(pats, 1, slice(2, None)),
              "second-previous-token": measure.offset_scores(pats, 2, slice(3, None)),
              "induction": measure.induction_scores(model, reps, CARD_REPEATS["half"])}
    truth, circuit = measure.circuit_measurements(measure.CircuitProbe(model, task, metric="logit_diff"), scores)
    card["ground_truth"] = truth
    card["measurement"]["circuit"] = circuit
    card["measurement"]["second_previous_token_scores"] = _rounded(scores["second-previous-token"])
    card["measurement"]["second_previous_token_score"] = "mean attention from position q to q - 2, q >= 3"
    card["measurement"]["criterion"] = circuit["criterion"] + " (the scores below, on the BOS R R sequences)"
    return card


CARD_MEASURES: dict[str, Callable[[nn.Module], dict]] = {
    "induction": lambda m: measure_card(m),
    "induction-circuit": lambda m: measure_induction_circuit_card(m),
    "ioi-circuit": lambda m: measure_ioi_circuit_card(m),
    "docstring": lambda m: measure_docstring_card(m),
    "ioi": lambda m: measure_ioi_card(m),
    "greater-than": lambda m: measure_greater_than_card(m),
    "addition": lambda m: measure_addition_card(m),
}


def train(name: str, seed: int = 0, out_dir: str | Path | None = None, steps: int | None = None) -> tuple[nn.Module, dict]:
    """Train zoo model `name` from `seed`; returns the hooked model and its card.
    With `out_dir`, also writes config.json, model.safetensors and card.json there. `steps` overrides the
    recipe's (a shortened run, for tests)."""
    if name not in RECIPES:
        raise KeyError(f"no recipe for {name!r}; recipes: {', '.join(RECIPES)}")
    recipe = RECIPES[name] if steps is None else dataclasses.replace(RECIPES[name], steps=steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        raw = build_model(recipe, name)
        facts = fit(raw, recipe, seed)
    finally:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:  # measured as shipped: loaded from its directory, tokenizer included
        write(raw, {}, tmp, language(recipe))
        model = load_model(tmp)
    hooked_gap = _hooked_vs_source(model, raw, recipe)
    info = model_info(model)
    card = {
        "name": name,
        "description": recipe.description,
        "architecture": {"class": info.architecture, "n_layers": info.n_layers, "n_heads": info.n_heads,
                         "d_model": info.d_model, "d_vocab": info.d_vocab, "has_mlp": info.has_mlp,
                         "n_params": sum(p.numel() for p in raw.parameters()), **recipe.arch},
        "vocabulary": language(recipe).vocabulary(),
        "training": {"seed": seed, **facts, "batch_size": recipe.batch_size, "seq_len": recipe.seq_len, "lr": recipe.lr,
                     "weight_decay": recipe.weight_decay,
                     "head_penalty": recipe.head_penalty, "mlp_penalty": recipe.mlp_penalty,
                     **({"embed_std": recipe.embed_std} if recipe.embed_std is not None else {}),
                     "optimizer": "AdamW, warmup then sqrt decay, grad clip 1.0",
                     "threads": 1, "data": recipe.data.describe(), "data_recipe": asdict(recipe.data),
                     "torch": torch.__version__},
        **({"hooked_vs_source": hooked_gap} if hooked_gap else {}),
        **CARD_MEASURES[card_kind(recipe)](model),
    }
    if out_dir is not None:
        write(raw, card, out_dir, language(recipe))
    return model, card


@torch.no_grad()
def _hooked_vs_source(model: nn.Module, raw: nn.Module, recipe: Recipe) -> dict | None:
    """Largest |log-probability difference| between the hooked (bridge) model and the Hugging Face model it wraps,
    on one training batch (log-probabilities, because centring the unembedding shifts every logit of a position
    alike); None for SmallTransformers (they are their own hooked model)."""
    if isinstance(raw, SmallTransformer):
        return None
    tokens, _ = language(recipe).batch(recipe, torch.Generator().manual_seed(12345))
    raw.eval()
    diff = float((model(tokens).log_softmax(-1) - raw(tokens).logits.log_softmax(-1)).abs().max())
    return {"max_abs_logprob_diff": round(diff, 6), "on": f"one training batch of {len(tokens)} x {tokens.shape[1]} tokens"}


def word_tokenizer(words: list[str], split: str = "words"):
    """A word-level Hugging Face tokenizer: one id per word in `words`, words[0] is BOS. `split`: "words" splits
    on whitespace only; "year-pairs" also splits digit runs into pairs ("1732" -> "17" "32"); "digits" splits
    punctuation off words and numbers into single digits ("12?" -> "1" "2" "?").
    Unknown words get id len(words), outside the model's vocabulary, so tasks reject them instead of
    silently reading another token (TransformerLens' bridge needs an unknown-word token)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({**{w: i for i, w in enumerate(words)}, "<unk>": len(words)}, unk_token="<unk>"))
    splits = {"words": [pre_tokenizers.WhitespaceSplit()],
              "year-pairs": [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d\d"), "isolated")],
              "digits": [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]}
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits[split])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=words[0], unk_token="<unk>")


def write(raw: nn.Module, card: dict, out_dir: str | Path, lang: Language | None = None) -> None:
    """Save the raw model (SmallTransformer.save, or save_pretrained with a word-level tokenizer: without one,
    AutoTokenizer hands a GPT-2 directory an empty GPT2Tokenizer) and card.json into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(raw, SmallTransformer):
        raw.save(out_dir)
    else:
        raw.save_pretrained(out_dir)
        (out_dir / "generation_config.json").unlink(missing_ok=True)
        lang = lang or LANGUAGES[SegmentRecipe]
        word_tokenizer(lang.words(), lang.split).save_pretrained(out_dir)
    (out_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n")


def remeasure(directory: str | Path) -> dict:
    """Re-run the card measurements on the model in `directory` (no training) and rewrite its card.json."""
    directory = Path(directory)
    card = json.loads((directory / "card.json").read_text())
    model = load_model(str(directory))
    card.update(CARD_MEASURES[card_kind(RECIPES[card["name"]]) if card["name"] in RECIPES else card["task"]["name"]](model))
    (directory / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Re-train a zoo model and write its directory.")
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default: the zoo directory)")
    parser.add_argument("--remeasure", action="store_true", help="only re-measure the saved model and rewrite its card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out) if args.out else ZOO_DIR / args.name
    card = remeasure(out) if args.remeasure else train(args.name, args.seed, out)[1]
    print(json.dumps({k: card[k] for k in ("training", "task", "ground_truth")}, indent=1))
    for key, value in card["measurement"].items():
        if key.endswith(("_scores", "_effects")):
            print(key, json.dumps(value))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
