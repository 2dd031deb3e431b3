"""A small transformer on TransformerLens' `HookedRootModule`, with TransformerLens' hook names.

For models TransformerLens' bridge cannot give per-head results for: attention-only toy models,
models with no LayerNorm (tracr), and anything we build by hand. Per-head q/k/v inputs and
results are always on. It can start the forward pass at any layer from a given residual stream,
which is what lets edge patching recompute only the suffix of the model a change affects.
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
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": functools.partial(F.gelu, approximate="tanh")}


@dataclass(frozen=True)
class SmallTransformerConfig:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int = 0  # 0: attention only
    normalization: str = "none"  # "none" | "layernorm"
    act_fn: str = "relu"  # "relu" | "gelu" | "gelu_new" (GPT-2's tanh approximation)
    positional: str = "learned"  # "learned" | "none"
    causal: bool = True
    d_vocab_out: int | None = None  # defaults to d_vocab
    vocab: list[str] | None = field(default=None, compare=False)  # token strings, for display
    name: str = "small-transformer"
    ln_eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self):
        if self.normalization not in ("none", "layernorm"):
            raise ValueError(f"normalization must be 'none' or 'layernorm', got {self.normalization!r}")
        if self.act_fn not in ACTIVATIONS:
            raise ValueError(f"act_fn must be one of {', '.join(map(repr, ACTIVATIONS))}, got {self.act_fn!r}")
        if not self.ln_eps > 0:
            raise ValueError(f"ln_eps must be positive, got {self.ln_eps!r}")
        if self.positional not in ("learned", "none"):
            raise ValueError(f"positional must be 'learned' or 'none', got {self.positional!r}")

    @property
    def n_out(self) -> int:
        return self.d_vocab_out or self.d_vocab


def scatter_positions(x: torch.Tensor, positions: torch.Tensor, n_positions: int) -> torch.Tensor:
    """x [b, T, ...] placed at `positions` [b, T] of zeros [b, n_positions, ...]."""
    out = x.new_zeros(x.shape[0], n_positions, *x.shape[2:])
    out[torch.arange(len(x), device=x.device)[:, None], positions.to(x.device)] = x
    return out


def _norm(cfg: SmallTransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps) if cfg.normalization == "layernorm" else nn.Identity()


class Attention(nn.Module):
    def __init__(self, cfg: SmallTransformerConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.cfg = cfg
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.empty(h, d, e)) for _ in range(3))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(h, e)) for _ in range(3))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_O = nn.Parameter(torch.zeros(d))
        for w in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.normal_(w, std=1 / math.sqrt(d))
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z, self.hook_result = HookPoint(), HookPoint()

    def forward(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
                attention_mask: torch.Tensor | None = None, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised per-head inputs [b, p, h, d] -> per-head results [b, p, h, d]. `attention_mask` [b, p]
        (True at real tokens): no query attends a padded key other than itself (a padded query then sees only
        itself, so nothing is NaN). With `query_positions` [b, T], q_in holds only those queries [b, T, h, d] and the
        results are zero at every other position."""
        q = self.hook_q(torch.einsum("bphd,hde->bphe", q_in, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bphd,hde->bphe", k_in, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bphd,hde->bphe", v_in, self.W_V) + self.b_V)
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
        p positions) and `attention_mask` [b, p] as in `forward`. Fires no hooks."""
        q = q_in @ self.W_Q[head] + self.b_Q[head]
        k = k_in @ self.W_K[head] + self.b_K[head]
        v = v_in @ self.W_V[head] + self.b_V[head]
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        return self.hook_post(self.act(pre)) @ self.W_out + self.b_out


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
        q_raw = self.hook_q_input(per_head)
        q_in = self.ln1(q_raw if query_positions is None else take_positions(q_raw, query_positions))
        k_in = self.ln1(self.hook_k_input(per_head))
        v_in = self.ln1(self.hook_v_input(per_head))
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
        positions count real tokens only (a left-padded prompt's first real token is at position 0)."""
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens exceeds the model's context of {self.cfg.n_ctx}")
        x = self.hook_embed(self.W_E[tokens])
        if self.cfg.positional == "learned":
            if attention_mask is None:
                pos = self.W_pos[: tokens.shape[-1]].expand_as(x)
            else:
                ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [b, p]
                pos = self.W_pos[ids]
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
