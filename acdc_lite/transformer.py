"""A small transformer on TransformerLens' `HookedRootModule`, with TransformerLens' hook names.

For models TransformerLens' bridge cannot give per-head results for: attention-only toy models,
models with no LayerNorm (tracr), and anything we build by hand; and, as a verified native twin
(acdc_lite.twin), for GPT-2 and Llama-family bridges. Per-head q/k/v inputs and results are always on.
It can start the forward pass at any layer from a given residual stream, which is what lets edge
patching recompute only the suffix of the model a change affects.

Llama-family options (all off by default): RMSNorm, rotary positions (from each prompt's first real
token, as for learned positions), a gated SiLU MLP, and grouped-query attention (`n_kv_heads` k/v
heads; `hook_k_input` / `hook_v_input` then carry one input per k/v head, [b, p, n_kv_heads, d_model],
and query head i reads k/v head i // (n_heads / n_kv_heads)).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from acdc_lite.padding import take_positions

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# act_fn -> the function; "gelu_new" is GPT-2's tanh approximation of GELU
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": functools.partial(F.gelu, approximate="tanh"), "silu": F.silu}
NORMALIZATIONS = ("none", "layernorm", "rmsnorm")
POSITIONALS = ("learned", "none", "rotary")
MLP_KINDS = ("standard", "gated")  # gated: W_out(act(x W_gate) * (x W_in)), as Llama's


@dataclass(frozen=True)
class SmallTransformerConfig:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int = 0  # 0: attention only
    normalization: str = "none"  # "none" | "layernorm" | "rmsnorm"
    act_fn: str = "relu"  # "relu" | "gelu" | "gelu_new" (GPT-2's tanh approximation) | "silu"
    positional: str = "learned"  # "learned" | "none" | "rotary"
    causal: bool = True
    d_vocab_out: int | None = None  # defaults to d_vocab
    vocab: list[str] | None = field(default=None, compare=False)  # token strings, for display
    name: str = "small-transformer"
    ln_eps: float = 1e-5  # LayerNorm (or RMSNorm) epsilon
    mlp_kind: str = "standard"  # "standard" | "gated"
    n_kv_heads: int | None = None  # k/v heads (grouped-query attention); None: one per query head
    rope_theta: float = 10000.0  # rotary base (positional="rotary")

    def __post_init__(self):
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(map(repr, NORMALIZATIONS))}, got {self.normalization!r}")
        if self.mlp_kind not in MLP_KINDS:
            raise ValueError(f"mlp_kind must be one of {', '.join(map(repr, MLP_KINDS))}, got {self.mlp_kind!r}")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"{self.n_heads} query heads cannot share {self.n_kv_heads} k/v heads")
        if self.positional == "rotary" and self.d_head % 2:
            raise ValueError(f"rotary positions need an even d_head, got {self.d_head}")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {', '.join(map(repr, ACTIVATIONS))}, got {self.act_fn!r}")
        if not self.ln_eps > 0:
            raise ValueError(f"ln_eps must be positive, got {self.ln_eps!r}")
        if self.positional not in POSITIONALS:
            raise ValueError(f"positional must be one of {', '.join(map(repr, POSITIONALS))}, got {self.positional!r}")

    @property
    def n_out(self) -> int:
        return self.d_vocab_out or self.d_vocab

    @property
    def kv_heads(self) -> int:
        """k/v heads (n_heads without grouped-query attention)."""
        return self.n_kv_heads or self.n_heads

    @property
    def kv_group(self) -> int:
        """Query heads per k/v head."""
        return self.n_heads // self.kv_heads


def scatter_positions(x: torch.Tensor, positions: torch.Tensor, n_positions: int) -> torch.Tensor:
    """x [b, T, ...] placed at `positions` [b, T] of zeros [b, n_positions, ...]."""
    out = x.new_zeros(x.shape[0], n_positions, *x.shape[2:])
    out[torch.arange(len(x), device=x.device)[:, None], positions.to(x.device)] = x
    return out


def position_ids(n: int, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Each position's index counted from its row's first real token: [b, n] with `attention_mask` [b, n] (padded
    positions get their neighbours' ids; nothing real reads them), else [1, n]."""
    if attention_mask is None:
        return torch.arange(n, device=device)[None]
    return (attention_mask.to(device).long().cumsum(-1) - 1).clamp(min=0)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (Llama's RMSNorm)."""

    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Rotary(nn.Module):
    """Rotary position tables: `inv_freq` [d_head / 2] (from `rope_theta`; a twin sets its source model's) and
    `scale` (a factor on cos and sin, 1 but for some scaled variants). Not saved: a config rebuilds it."""

    def __init__(self, cfg: SmallTransformerConfig):
        super().__init__()
        e = cfg.d_head
        self.register_buffer("inv_freq", 1.0 / cfg.rope_theta ** (torch.arange(0, e, 2, dtype=torch.int64).float() / e),
                             persistent=False)
        self.scale = 1.0

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [b, p] -> cos, sin [b, p, d_head]."""
        freqs = positions.float()[..., None] * self.inv_freq.float()
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos() * self.scale, angles.sin() * self.scale


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., e] rotated by cos, sin [..., e] (broadcast): x cos + (-x2, x1) sin, halves x1, x2 of the last dim."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _norm(cfg: SmallTransformerConfig) -> nn.Module:
    if cfg.normalization == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
    return RMSNorm(cfg.d_model, cfg.ln_eps) if cfg.normalization == "rmsnorm" else nn.Identity()


class _SharedNorm(torch.autograd.Function):
    """`norm(resid)` for every head of `x` [b, p, n, d], a view of `resid` [b, p, d] expanded over heads (so the same
    values): normalised once, yet each head gets its own gradient, as if its copy had been normalised (the backward is
    the norm's vector-Jacobian product at `resid`, batched over heads). `resid` comes detached: x carries the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, resid: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        ctx.norm = norm
        ctx.save_for_backward(resid)
        return norm(resid)[:, :, None, :].expand_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (resid,) = ctx.saved_tensors
        with torch.enable_grad():
            r = resid.detach().requires_grad_(True)
            (per_head,) = torch.autograd.grad(ctx.norm(r), r, grad.movedim(2, 0), is_grads_batched=True)
        return per_head.movedim(0, 2), None, None


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b read the same memory the same way (so hold the same values)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


class Attention(nn.Module):
    def __init__(self, cfg: SmallTransformerConfig):
        super().__init__()
        h, g, d, e = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.empty(n, d, e)) for n in (h, g, g))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(n, e)) for n in (h, g, g))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_O = nn.Parameter(torch.zeros(d))
        for w in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(w, std=1 / math.sqrt(d))
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z, self.hook_result = HookPoint(), HookPoint()
        if cfg.positional == "rotary":
            self.rotary = Rotary(cfg)

    def _rotated(self, q: torch.Tensor, k: torch.Tensor, query_positions: torch.Tensor | None,
                 attention_mask: torch.Tensor | None, per_head: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k rotated by their positions (q's at `query_positions` [b, T]; None: every position), as they are
        without rotary positions. per_head: q [b, T, h, e], k [b, p, h, e]; else q [..., b, T, e], k [..., b, p, e]."""
        if self.cfg.positional != "rotary":
            return q, k
        n_keys = k.shape[1] if per_head else k.shape[-2]
        ids = position_ids(n_keys, attention_mask, k.device)  # [b|1, p]
        q_ids = ids if query_positions is None else torch.gather(ids.expand(len(query_positions), -1), 1,
                                                                 query_positions.to(ids.device))
        (qc, qs), (kc, ks) = self.rotary.tables(q_ids), self.rotary.tables(ids)  # [b|1, T|p, e]
        if per_head:
            qc, qs, kc, ks = qc[:, :, None], qs[:, :, None], kc[:, :, None], ks[:, :, None]
        return rotate(q, qc, qs), rotate(k, kc, ks)

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                attention_mask: torch.Tensor | None = None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised per-head inputs [b, p, h, d] (k_in, v_in: [b, p, n_kv_heads, d]) -> per-head results
        [b, p, h, d]. `attention_mask` [b, p] (True at real tokens): no query attends a padded key other than itself
        (a padded query then sees only itself, so nothing is NaN). With `query_positions` [b, T], q_in holds only
        those queries [b, T, h, d] and the results are zero at every other position."""
        q = self.hook_q(torch.einsum("bphd,hde->bphe", q_in, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bphd,hde->bphe", k_in, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bphd,hde->bphe", v_in, self.W_V) + self.b_V)
        q, k = self._rotated(q, k, query_positions, attention_mask, per_head=True)
        if self.cfg.kv_group > 1:  # each query head reads its group's k/v head
            k, v = k.repeat_interleave(self.cfg.kv_group, dim=2), v.repeat_interleave(self.cfg.kv_group, dim=2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        hidden = self.hidden_keys(scores.shape[-1], query_positions, attention_mask)
        if hidden is not None:
            scores = scores.masked_fill(hidden[:, None] if hidden.dim() == 3 else hidden, float("-inf"))
        pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        result = torch.einsum("bqhe,hed->bqhd", z, self.W_O)
        return self.hook_result(result if query_positions is None else scatter_positions(result, query_positions, k.shape[1]))

    def hidden_keys(self, n_keys: int, query_positions: torch.Tensor | None,
                    attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """[q, k] or [b, q, k] bool: True where a query may not attend a key (a later key; a padded key other than
        itself, see `forward`), or None. `query_positions` [b, q] (None: every position, in order)."""
        keys = torch.arange(n_keys, device=self.W_Q.device)
        queries = keys[:, None] if query_positions is None else query_positions.to(keys.device)[..., None]
        hidden = (keys > queries) if self.cfg.causal else None
        if attention_mask is not None:
            padded = ~attention_mask.bool().to(keys.device)[:, None, :] & (keys != queries)  # [b, q, k]
            hidden = padded if hidden is None else hidden | padded
        return hidden

    def head_result(self, head: int, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                    query_positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One head's result [..., b, q, d_model] from its normalised inputs q_in [..., b, q, d_model] and k_in, v_in
        [..., b, p, d_model] (leading dimensions broadcast), with its queries at `query_positions` [b, q] (None: all
        p positions) and `attention_mask` [b, p] as in `forward`; k_in, v_in are its k/v group's. Fires no hooks."""
        kv = head // self.cfg.kv_group
        q = q_in @ self.W_Q[head] + self.b_Q[head]
        k = k_in @ self.W_K[kv] + self.b_K[kv]
        v = v_in @ self.W_V[kv] + self.b_V[kv]
        q, k = self._rotated(q, k, query_positions, attention_mask, per_head=False)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.cfg.d_head)  # [..., b, q, p]
        hidden = self.hidden_keys(k.shape[-2], query_positions, attention_mask)
        if hidden is not None:
            scores = scores.masked_fill(hidden, float("-inf"))
        return scores.softmax(dim=-1) @ v @ self.W_O[head]


class MLP(nn.Module):
    def __init__(self, cfg: SmallTransformerConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp) / math.sqrt(cfg.d_model))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.randn(cfg.d_mlp, cfg.d_model) / math.sqrt(cfg.d_mlp))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()
        self.gated = cfg.mlp_kind == "gated"
        if self.gated:  # hook_pre is the gate's pre-activation and hook_pre_linear the input projection (as in TransformerLens)
            self.W_gate = nn.Parameter(torch.randn(cfg.d_model, cfg.d_mlp) / math.sqrt(cfg.d_model))
            self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp))
            self.hook_pre_linear = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate = self.hook_pre(x @ self.W_gate + self.b_gate)
            post = self.act(gate) * self.hook_pre_linear(x @ self.W_in + self.b_in)
        else:
            post = self.act(self.hook_pre(x @ self.W_in + self.b_in))
        return self.hook_post(post) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: SmallTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.ln1 = _norm(cfg)
        self.attn = Attention(cfg)
        self.has_mlp = cfg.d_mlp > 0
        if self.has_mlp:
            self.ln2 = _norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_mlp_in, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_q_input, self.hook_k_input, self.hook_v_input = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out = HookPoint()

    def forward(self, resid: torch.Tensor, attention_mask: torch.Tensor | None = None,
                query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """[b, p, d_model] -> [b, p, d_model]; `attention_mask` [b, p] as in `Attention.forward`. With
        `query_positions` [b, T] (the last block, when only those positions are read) queries and the MLP run there
        only: hooks see every position, and the block's outputs are zero (its output stream meaningless) elsewhere."""
        resid = self.hook_resid_pre(resid)
        per_head = resid[:, :, None, :].expand(-1, -1, self.cfg.n_heads, -1)
        per_kv = per_head if self.cfg.kv_group == 1 else resid[:, :, None, :].expand(-1, -1, self.cfg.kv_heads, -1)
        normed: list[torch.Tensor] = []  # the residual normalised once, for every input a hook left as it was

        def norm(x: torch.Tensor, given: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
            """ln1(x), at `positions` [b, T] only when given."""
            if x is given:
                if not normed:
                    normed.append(self.ln1(resid)[:, :, None, :])
                x = normed[0].expand_as(given)
                return x if positions is None else take_positions(x, positions)
            if x.requires_grad and _same_layout(x, given) and not any(w.requires_grad for w in self.ln1.parameters()):
                # a gradient pass's own view of the unchanged input (acdc_lite.patching): normalised once
                x = _SharedNorm.apply(x, resid.detach(), self.ln1)
                return x if positions is None else take_positions(x, positions)
            return self.ln1(x if positions is None else take_positions(x, positions))

        q_in = norm(self.hook_q_input(per_head), per_head, query_positions)  # only the queries read
        k_in = norm(self.hook_k_input(per_kv), per_kv)
        v_in = norm(self.hook_v_input(per_kv), per_kv)
        results = self.attn(q_in, k_in, v_in, attention_mask, query_positions)
        attn_out = self.hook_attn_out(results.sum(dim=2) + self.attn.b_O)
        resid = self.hook_resid_mid(resid + attn_out)
        if self.has_mlp:
            mlp_in = self.hook_mlp_in(resid.clone())
            if query_positions is None:
                mlp_out = self.mlp(self.ln2(mlp_in))
            else:
                mlp_out = scatter_positions(self.mlp(self.ln2(take_positions(mlp_in, query_positions))), query_positions,
                                            resid.shape[1])
            resid = resid + self.hook_mlp_out(mlp_out)
        return self.hook_resid_post(resid)


class _UnembedHooks(nn.Module):
    """The unembedding's input hook (no weights: a submodule, so the hook is named `unembed.hook_in`)."""

    def __init__(self):
        super().__init__()
        self.hook_in = HookPoint()


class SmallTransformer(HookedRootModule):
    """Decoder-only transformer with TransformerLens hook names; see module docstring."""

    supports_start_at_layer = True
    supports_query_positions = True  # forward(query_positions=...) computes the last block only where it is read
    supports_node_steps = True  # blocks expose ln1, attn.head_result, ln2, mlp (see acdc_lite.incremental)

    def __init__(self, cfg: SmallTransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, cfg.d_model) / math.sqrt(cfg.d_model))
        if cfg.positional == "learned":
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, cfg.d_model) / math.sqrt(cfg.d_model))
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = _norm(cfg)
        self.unembed = _UnembedHooks()  # `unembed.hook_in`, as on a TransformerBridge; W_U, b_U stay here
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, cfg.n_out) / math.sqrt(cfg.d_model))
        self.b_U = nn.Parameter(torch.zeros(cfg.n_out))
        self.setup()

    def embed(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[b, p] token ids -> [b, p, d_model] residual stream entering block 0. With `attention_mask` [b, p],
        positions count real tokens only (a left-padded prompt's first real token is at position 0). Rotary
        positions add nothing here (attention rotates q and k)."""
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens exceeds the model's context of {self.cfg.n_ctx}")
        x = self.hook_embed(self.W_E[tokens])
        if self.cfg.positional == "learned":
            if attention_mask is None:
                pos = self.W_pos[: tokens.shape[-1]].expand_as(x)
            else:
                pos = self.W_pos[position_ids(tokens.shape[-1], attention_mask, tokens.device)]
            x = x + self.hook_pos_embed(pos)
        return x

    def forward(self, tokens: torch.Tensor, start_at_layer: int | None = None,
                resid: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """[b, p] tokens -> [b, p, d_vocab_out] logits.

        With `start_at_layer=l`, `resid` [b, p, d_model] is the residual stream entering block l
        and blocks before l are skipped (`tokens` is then unused). `attention_mask` [b, p] (True/1 at real
        tokens) hides padded keys and counts positions from each prompt's first real token. `query_positions`
        [b, T]: only the logits there are wanted: the last block computes only them (see `Block.forward`); logits
        elsewhere are meaningless.
        """
        if start_at_layer is None:
            x, first = self.embed(tokens, attention_mask), 0
        else:
            if resid is None:
                raise ValueError("start_at_layer needs the residual stream entering that layer")
            x, first = resid, start_at_layer
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks[first:], start=first):
            x = block(x, attention_mask, query_positions if i == last else None)
        return self.unembed.hook_in(self.ln_final(x)) @ self.W_U + self.b_U

    # ---- files ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=1))

    @classmethod
    def from_dir(cls, directory: str | Path) -> SmallTransformer:
        directory = Path(directory)
        cfg = SmallTransformerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(directory / WEIGHTS_FILE))
        return model.eval()

    @staticmethod
    def is_model_dir(directory: str | Path) -> bool:
        """True for a directory written by `save` (not a Hugging Face model directory)."""
        path = Path(directory) / CONFIG_FILE
        return path.is_file() and "n_heads" in json.loads(path.read_text()) and (Path(directory) / WEIGHTS_FILE).is_file()
