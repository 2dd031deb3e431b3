"""Run auto-circuit 1.0.1 on a saved Hugging Face GPT-2 directory and saved token ids; print one JSON line.

Runs in auto-circuit's own environment (numpy 1.26, transformer-lens 2.16), never in acdc-lite's: bench_peer.py
starts it as a subprocess. It only calls auto-circuit's and transformer-lens' public API:

  eap:  mask_gradient_prune_scores(grad_function="logit", answer_function="avg_diff", mask_val=0.0) (the library's
        fast EAP), then the selection a user runs: run_circuits over edge_counts_util's default edge counts and
        measure_answer_diff_percent; the circuit is the smallest count recovering >= 90% of the logit difference.
  acdc: acdc_prune_scores with one tau (KL), on one batch of every prompt; kept edges are written as auto-circuit
        PruneScores (1 kept, 0 removed) in safetensors to --out.

Forward-equivalents: every call of the wrapped HookedTransformer, weighted by its rows / all prompts and, for
ACDC's suffix calls, by the share of layers it runs. Peak memory: this process's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def load_tl_model(model_dir: str):
    """HookedTransformer from a saved HF GPT-2 directory, set up as auto-circuit's own loader sets up a pretrained
    model (LN folded, writing weights and unembedding centred, attention results, split q/k/v inputs, MLP-in hooks)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
                                  d_mlp=c.n_inner or 4 * c.n_embd, n_ctx=c.n_positions, d_vocab=c.vocab_size,
                                  act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
                                  positional_embedding_type="standard", default_prepend_bos=False,
                                  use_attn_result=True, use_split_qkv_input=True, use_hook_mlp_in=True)  # edge patching
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True)
    for param in model.parameters():
        param.requires_grad = False  # the library's own loader does the same (mask gradients are unaffected)
    return model.eval()


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: ru_maxrss would carry the parent's peak over fork and exec)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PassCounter:
    """Counts forward-equivalents of a HookedTransformer (rows / n_prompts x layers run / n_layers per call)."""

    def __init__(self, model, n_prompts: int):
        self.total, self.calls, self.n_prompts, self.n_layers = 0.0, 0, n_prompts, model.cfg.n_layers
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        start = kwargs.get("start_at_layer") or 0
        self.calls += 1
        self.total += len(x) / self.n_prompts * (self.n_layers - start) / self.n_layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method", choices=["eap", "acdc", "logits"])
    p.add_argument("--model", required=True, help="HF GPT-2 directory")
    p.add_argument("--prompts", required=True, help="safetensors with clean, corrupt [N, P], answers, foils [N, 1]")
    p.add_argument("--n", type=int, required=True, help="use the first N prompts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--tau", type=float, default=0.01)
    p.add_argument("--target", type=float, default=0.9, help="eap: faithfulness the selected circuit must reach")
    p.add_argument("--no-selection", action="store_true", help="eap: scoring only")
    p.add_argument("--out", help="acdc: kept edges as PruneScores; logits: last-position logits (safetensors)")
    args = p.parse_args()
    torch.set_grad_enabled(True)

    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.utils.graph_utils import patchable_model
    from safetensors.torch import load_file, save_file

    data = load_file(args.prompts)
    clean, corrupt = data["clean"][:args.n], data["corrupt"][:args.n]
    answers, foils = list(data["answers"][:args.n]), list(data["foils"][:args.n])
    tl_model = load_tl_model(args.model)
    if args.method == "logits":
        with torch.no_grad():
            save_file({"logits": tl_model(clean)[:, -1].contiguous()}, args.out)
        print(json.dumps({"method": "logits"}))
        return

    batch_size = args.n if args.method == "acdc" else min(args.batch_size, args.n)  # ACDC uses its first batch only
    loader = PromptDataLoader(PromptDataset(clean, corrupt, answers, foils), seq_len=clean.shape[1], diverge_idx=0,
                              batch_size=batch_size, shuffle=False)
    started, cpu = time.perf_counter(), time.process_time()
    model = patchable_model(tl_model, factorized=True, slice_output="last_seq", separate_qkv=True,
                            device=torch.device("cpu"))
    counter = PassCounter(tl_model, args.n)
    out = {"method": args.method, "n_prompts": args.n, "edges_total": len(model.edges)}
    if args.method == "eap":
        from auto_circuit.metrics.prune_metrics.answer_diff_percent import measure_answer_diff_percent
        from auto_circuit.prune import run_circuits
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
        from auto_circuit.types import PatchType
        from auto_circuit.utils.graph_utils import edge_counts_util

        scores = mask_gradient_prune_scores(model=model, dataloader=loader, official_edges=None, grad_function="logit",
                                            answer_function="avg_diff", mask_val=0.0)
        out["scoring_seconds"], out["scoring_forward_equivalents"] = time.perf_counter() - started, counter.total
    if args.method == "eap" and not args.no_selection:
        counts = edge_counts_util(model.edges, prune_scores=scores)
        outs = run_circuits(model, loader, counts, scores, patch_type=PatchType.TREE_PATCH)
        recovered = dict(measure_answer_diff_percent(model, loader, outs))  # edge count -> % of the full model's
        reaching = [n for n, pct in sorted(recovered.items()) if pct >= 100 * args.target]
        out.update(selected_edges=reaching[0] if reaching else None, selection_counts=len(counts),
                   selection_seconds=time.perf_counter() - started - out["scoring_seconds"])
    elif args.method == "acdc":
        from auto_circuit.prune_algos.ACDC import acdc_prune_scores

        scores = acdc_prune_scores(model=model, dataloader=loader, official_edges=None, tao_exps=[0], tao_bases=[args.tau],
                                   faithfulness_target="kl_div")
        kept = {name: (s == float("inf")).float().contiguous() for name, s in scores.items()}  # inf: never removed
        out["edges"] = int(sum(int(k.sum()) for k in kept.values()))
        save_file(kept, args.out)
    out.update(seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu,
               forward_equivalents=counter.total, model_calls=counter.calls,
               peak_rss_mb=peak_rss_mb())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
