"""Compiling a RASP program with tracr and converting it into a `SmallTransformer`, checked against tracr."""

from __future__ import annotations

import logging

import numpy as np
import torch

from acdc_lite import hooks
from acdc_lite.tracr.ground_truth import ground_truth_circuit, ground_truth_edges
from acdc_lite.tracr.program import COMPILER_PAD, TracrProgram, rasp_module
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig

log = logging.getLogger(__name__)


def compile_program(program, vocab: set, max_seq_len: int, compiler_bos: str = "BOS", *, name: str = "program",
                    causal: bool = False, mlp_exactness: int = 100, seq_len: int | None = None,
                    unique_inputs: bool = False, default_examples: int = 50) -> TracrProgram:
    """Compile a RASP `program` with tracr and convert it; see the package docstring.

    seq_len: tokens after BOS in task inputs (default max_seq_len); unique_inputs: task inputs are
    permutations (no repeated token).
    """
    rasp_module()
    from tracr.compiler import compiling

    assembled = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=max_seq_len, causal=causal,
                                                 compiler_bos=compiler_bos, compiler_pad=COMPILER_PAD,
                                                 mlp_exactness=mlp_exactness)
    labels = tuple(assembled.residual_labels)
    token_values = sorted(assembled.input_encoder.encoding_map, key=assembled.input_encoder.encoding_map.get)
    categorical = hasattr(assembled.output_encoder, "encoding_map")
    if categorical:
        out_map = assembled.output_encoder.encoding_map
        output_values = tuple(sorted(out_map, key=out_map.get))
        out_dims = [labels.index(f"{program.label}:{v}") for v in output_values]
    else:
        output_values = None
        out_dims = [labels.index(program.label)]
    model = _convert(assembled, out_dims, [str(v) for v in token_values], f"tracr-{name}")
    model.acdc_equivalence = _check_against_tracr(assembled, model, categorical, name)
    directions = ground_truth_edges(model, program, labels, compiler_bos)
    ground_truth = ground_truth_circuit(model, directions, name, program, labels, vocab, max_seq_len, compiler_bos)
    n = seq_len or max_seq_len
    log.info("compiled %s: %d layers x %d heads, d_model %d, d_mlp %d; ground truth %d edges", name,
             model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model, model.cfg.d_mlp, len(directions))
    return TracrProgram(name=name, model=model, ground_truth=ground_truth, vocab=tuple(token_values), bos=compiler_bos,
                        output_values=output_values, residual_labels=labels, max_seq_len=max_seq_len, seq_len=n,
                        unique_inputs=unique_inputs, default_examples=default_examples, directions=directions,
                        assembled=assembled)


def _convert(assembled, out_dims: list[int], vocab: list[str], name: str) -> SmallTransformer:
    """tracr's haiku parameters -> a SmallTransformer reading logits from residual dims `out_dims`."""
    mc = assembled.model_config
    if mc.layer_norm:
        raise ValueError("this tracr model uses LayerNorm; compiled tracr models never do, so it cannot be converted")
    p = {k: {n: torch.from_numpy(np.array(v, dtype=np.float32)) for n, v in d.items()} for k, d in assembled.params.items()}
    w_e, w_pos = p["token_embed"]["embeddings"], p["pos_embed"]["embeddings"]
    h, e = mc.num_heads, mc.key_size
    cfg = SmallTransformerConfig(n_layers=mc.num_layers, n_heads=h, d_model=w_e.shape[1], d_head=e, d_vocab=w_e.shape[0],
                                 n_ctx=w_pos.shape[0], d_mlp=mc.mlp_hidden_size, normalization="none", act_fn="relu",
                                 positional="learned", causal=bool(mc.causal), d_vocab_out=len(out_dims), vocab=vocab,
                                 name=name)
    d = cfg.d_model
    state = {"W_E": w_e, "W_pos": w_pos, "W_U": torch.zeros(d, len(out_dims)), "b_U": torch.zeros(len(out_dims))}
    state["W_U"][out_dims, torch.arange(len(out_dims))] = 1.0
    for layer in range(cfg.n_layers):
        pre, blk = f"transformer/layer_{layer}", f"blocks.{layer}"
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            state[f"{blk}.attn.W_{ours}"] = p[f"{pre}/attn/{theirs}"]["w"].view(d, h, e).permute(1, 0, 2)  # [h, d, e]
            state[f"{blk}.attn.b_{ours}"] = p[f"{pre}/attn/{theirs}"]["b"].view(h, e)
        state[f"{blk}.attn.W_O"] = p[f"{pre}/attn/linear"]["w"].view(h, e, d)
        state[f"{blk}.attn.b_O"] = p[f"{pre}/attn/linear"]["b"]
        state[f"{blk}.mlp.W_in"], state[f"{blk}.mlp.b_in"] = p[f"{pre}/mlp/linear_1"]["w"], p[f"{pre}/mlp/linear_1"]["b"]
        state[f"{blk}.mlp.W_out"], state[f"{blk}.mlp.b_out"] = p[f"{pre}/mlp/linear_2"]["w"], p[f"{pre}/mlp/linear_2"]["b"]
    model = SmallTransformer(cfg)
    model.load_state_dict({k: v.contiguous() for k, v in state.items()})
    return model.eval()


def compare_with_tracr(prog: TracrProgram, tokens: torch.Tensor | None = None) -> dict:
    """Our model against tracr's own forward pass on `tokens` (default: every task-length input).

    Returns the number of inputs, the max |difference| of the final residual stream and of the output
    values, and whether every decoded output (argmax ids, or values to 1e-4) agrees.
    """
    tokens = prog.encode(prog.all_inputs()) if tokens is None else tokens
    ref_resid, ref_out = prog.tracr_forward(tokens)
    with torch.no_grad():
        resid = {}
        hook = (hooks.resid_post(prog.model.cfg.n_layers - 1), lambda x, hook: resid.setdefault("x", x))
        with prog.model.hooks(fwd_hooks=[hook]):
            logits = prog.model(tokens)
    ref_logits = ref_resid @ prog.model.W_U.detach()
    ours = logits.argmax(-1) if prog.categorical else logits[..., 0]
    if prog.categorical:
        decoded_equal = bool((ours == ref_out).all())
    else:
        decoded_equal = bool(torch.allclose(ours, ref_out.float(), atol=1e-4))
    return {"n_inputs": len(tokens), "max_abs_residual": float((resid["x"] - ref_resid).abs().max()),
            "max_abs_output": float((logits - ref_logits).abs().max()), "decoded_equal": decoded_equal}


def _check_against_tracr(assembled, model: SmallTransformer, categorical: bool, name: str, tolerance: float = 1e-4):
    """The converted model against tracr's own forward pass on a seeded probe of random inputs (BOS first):
    ModelLoadError (EquivalenceError) unless the final residual streams agree within `tolerance` and every
    decoded output agrees."""
    import jax.numpy as jnp

    from acdc_lite.models import Equivalence, probe_tokens, require_equivalent

    vocab_ids = sorted(v for k, v in assembled.input_encoder.encoding_map.items() if k not in (COMPILER_PAD,))
    bos = assembled.input_encoder.encoding_map[assembled.input_encoder.bos_token]
    ids = torch.tensor([i for i in vocab_ids if i != bos])
    probe = probe_tokens(len(ids), model.cfg.n_ctx - 1)
    tokens = torch.cat([torch.full((len(probe), 1), bos), ids[probe]], dim=1)
    out = assembled.forward(assembled.params, jnp.asarray(tokens.numpy()))
    ref_resid = torch.from_numpy(np.array(out.transformer_output.output, dtype=np.float32))
    resid = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(hooks.resid_post(model.cfg.n_layers - 1),
                                                  lambda x, hook: resid.setdefault("x", x))]):
        logits = model(tokens)
    ref_logits = ref_resid @ model.W_U.detach()
    if categorical:
        agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()
    else:
        agree = torch.isclose(logits, ref_logits, atol=tolerance).all(-1).float().mean()
    eq = Equivalence("tracr model (final residual stream)", float((resid["x"] - ref_resid).abs().max()), float(agree),
                     tolerance, tuple(tokens.shape))
    return require_equivalent(eq, f"tracr-{name}")
