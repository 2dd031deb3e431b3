"""Every hook-name string the engine uses, in one place.

The names are TransformerLens' (they exist on a `TransformerBridge` in compatibility mode with
per-head results, split q/k/v inputs and MLP-input hooks switched on, and on our own
`SmallTransformer`). Everything else in the package speaks `Node`s and `Edge`s.
"""

INPUT = "blocks.0.hook_resid_pre"  # sender output of the `input` node: token + position embeddings
UNEMBED_IN = "unembed.hook_in"  # the unembedding's input (after the final norm), [batch, pos, d_model]


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    """The last layer's resid_post is the `logits` receiver's input (before the final norm)."""
    return f"blocks.{layer}.hook_resid_post"


def head_result(layer: int) -> str:
    """Per-head attention output written to the residual stream, [batch, pos, head, d_model]."""
    return f"blocks.{layer}.attn.hook_result"


def head_input(layer: int, port: str) -> str:
    """Per-head q, k or v input (before the layer norm), [batch, pos, head, d_model]."""
    return f"blocks.{layer}.hook_{port}_input"


def mlp_in(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_in"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def mlp_post(layer: int) -> str:
    """MLP neuron activations (after the nonlinearity, and the gate for gated MLPs: the input to W_out), [batch, pos, d_mlp]."""
    return f"blocks.{layer}.mlp.hook_post"


def attn_pattern(layer: int) -> str:
    """Attention probabilities, [batch, head, query_pos, key_pos]."""
    return f"blocks.{layer}.attn.hook_pattern"


def tl_activation(name: str, layer: int) -> str:
    """TransformerLens' full hook name of activation `name` ("z", "q", "k", "v", "pattern", "resid_pre",
    "attn_out", "mlp_out", ...) at `layer`: the names `transformer_lens.patching` sweeps address."""
    from transformer_lens.utilities import get_act_name

    return get_act_name(name, layer)
