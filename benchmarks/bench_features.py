"""Features benchmark: the issue-23 "Must show" numbers, measured with the commands' own defaults.

1. `acdc-lite sae train --model induction-attn-2l --site a1.h0 --edge 'a1.h0->logits'` (3,000 induction prompts,
   30% held out; 96 latents, TopK k=3, 1,500 Adam steps, seed 0): reconstruction on held-out prompts, and the
   feature for the token to be copied through the induction head a1.h0's edge to the logits.
2. `acdc-lite probe --model induction-attn-2l --variable answer` (2,000 prompts): the token to be copied by layer
   and head, against shuffled labels. The card's induction heads are in layer 1.
3. `acdc-lite probe --model addition-llama-2l --variable carry` (2,000 prompts): the carry by layer and head.

    OMP_NUM_THREADS=1 python benchmarks/bench_features.py   # writes benchmarks/features.md and features-*.png
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    import torch

    from acdc_lite.features.commands import probe_into, train_sae_into
    from acdc_lite.features.sae import SAEConfig

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    try:
        t = time.perf_counter()
        sae = train_sae_into(work / "sae", SAEConfig(site="a1.h0"), model="induction-attn-2l", edge="a1.h0->logits",
                             progress=False)
        sae_seconds = time.perf_counter() - t
        sae_md = (work / "sae" / "report.md").read_text()
        probes = []
        for name, model, variable in (("induction", "induction-attn-2l", "answer"), ("addition", "addition-llama-2l", "carry")):
            t = time.perf_counter()
            probe_into(work / name, variable, model=model)
            probes.append((name, model, variable, time.perf_counter() - t, (work / name / "report.md").read_text()))
            shutil.copy(work / name / "probes.png", HERE / f"features-probes-{name}.png")
        run = json.loads((work / "sae" / "run.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r, h = sae["reconstruction"], sae["feature"]["headline"]
    lines = ["# Features: dictionaries, a feature through a circuit edge, probes", "",
             "Written by `OMP_NUM_THREADS=1 python benchmarks/bench_features.py` (see its docstring for the settings) on "
             f"{run['machine']['cpu_count']} CPU cores, torch {run['versions'].get('torch')}, eai-sparsify for the dictionary, "
             "scikit-learn for the probes.", "",
             "## Must show", "", "| claim | measured | needed |", "|---|---|---|",
             f"| FVU of the SAE on a1.h0 (held-out prompts) | {r['fvu']:.3f} | < 0.2 |",
             f"| task metric with the SAE spliced in vs the model | {r['metric_spliced']:.3f} vs {r['metric_model']:.3f} "
             f"({r['metric_change']:.1%}) | within 10% |",
             f"| held-out AUROC of the rule's feature for the copied token {h['value']} | {h['heldout_auroc']:.3f} | >= 0.9 |",
             f"| its ablation through a1.h0->logits: share of the edge's effect | {h['share']:.1%} | >= 50% |",
             f"| {len(sae['feature']['random_shares'])} random active features: mean (max) share | "
             f"{sae['feature']['random_share_mean']:.1%} ({sae['feature']['random_share_max']:.1%}) | baseline |", "",
             f"SAE training and every measurement: {sae_seconds:.0f} s. Feature rule (on training prompts only): for each "
             "token, the latent whose activation at the answer position has the highest AUROC for 'the token to be copied "
             "is this one', ties (within 0.001) to the larger mean activation; the headline token is the one whose "
             "training prompts lose most when the edge is ablated. Edge and feature ablations are resample ablations "
             "(the corrupted prompt, where the segment is not repeated) of the edge only.", "",
             sae_md.replace("# ", "### ", 1).replace("\n## ", "\n#### "), ""]
    for name, model, variable, seconds, md in probes:
        lines += [f"## Probes: {variable} in {model} ({seconds:.0f} s)", "", f"![probes](features-probes-{name}.png)", "",
                  md.split("\n", 2)[2].replace("![accuracy by layer](probes.png)\n\n", "")]
    (HERE / "features.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
