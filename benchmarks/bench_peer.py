"""acdc-lite beside auto-circuit 1.0.1 on the same models and token ids: EAP (selection included) and exact ACDC.

    python benchmarks/bench_peer.py --peer-python PATH/TO/autocircuit-venv/bin/python [--work DIR]

auto-circuit runs in its own environment (numpy 1.26.4, transformer-lens 2.16; `pip install torch==2.13.0` first,
then `pip install auto-circuit==1.0.1 numpy==1.26.4 "transformer-lens==2.16.*" "datasets<4" pyarrow==18.1.0`),
driven by benchmarks/peer_driver.py. Both load the same Hugging Face GPT-2 directories written here (random
weights, fixed seeds): ours with load_model (TransformerBridge), theirs as a HookedTransformer from the same
weights; both read the same token-id tensors from one safetensors file. Every row is one fresh subprocess (peak
RSS = its VmHWM, model loading included), and the two tools' rows alternate so machine load hits both alike.
Writes benchmarks/peer.md and benchmarks/peer.csv after every row; finished rows are kept in <work>/rows.jsonl,
so a stopped run continues with the same --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
EAP_PROMPTS = (16, 32, 64)
ACDC_PROMPTS = 32
SEQ_LEN = 32
VOCAB_USED = 2048  # prompt token ids are drawn below this (valid in both models)
TAU = 0.01
TARGET = 0.9


# ---- setup ------------------------------------------------------------------------------------------------------
def write_models_and_prompts(work: Path) -> None:
    """A GPT-2-small-shaped model, a 2-layer GPT-2 and 64 prompt pairs of 32 tokens, all seeded."""
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    shapes = {"gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024),
              # larger initial weights than GPT-2's 0.02, so ablating an edge moves KL by more than tau
              "gpt2-2layer": dict(n_layer=2, n_head=8, n_embd=256, vocab_size=VOCAB_USED, n_positions=64,
                                  initializer_range=0.1)}
    for seed, (name, kw) in enumerate(shapes.items()):
        if not (work / name / "config.json").exists():
            torch.manual_seed(seed)
            GPT2LMHeadModel(GPT2Config(bos_token_id=0, eos_token_id=0, **kw)).eval().save_pretrained(work / name)
    g = torch.Generator().manual_seed(0)
    n = max(EAP_PROMPTS)
    save_file({"clean": torch.randint(1, VOCAB_USED, (n, SEQ_LEN), generator=g),
               "corrupt": torch.randint(1, VOCAB_USED, (n, SEQ_LEN), generator=g),
               "answers": torch.randint(1, VOCAB_USED, (n, 1), generator=g),
               "foils": torch.randint(1, VOCAB_USED, (n, 1), generator=g)}, work / "prompts.safetensors")


def _task(work: Path, n: int):
    from safetensors.torch import load_file

    from acdc_lite import Task

    d = load_file(work / "prompts.safetensors")
    return Task("peer", d["clean"][:n], d["corrupt"][:n], d["answers"][:n], d["foils"][:n])


# ---- our rows (run in a subprocess of this script) ----------------------------------------------------------------
def our_row(kind: str, n: int, work: Path, out: Path | None) -> dict:
    from acdc_lite import discover, load_model, search

    task = _task(work, n)
    if kind == "eap":
        model = load_model(str(work / "gpt2-small"))
        cpu = time.process_time()
        circuit = discover(model, task, "eap", progress=False)
        c = circuit.cost
        row = {"seconds": c["seconds"], "forward_equivalents": c["forward_passes"], "backward": c["backward_passes"],
               "selection_forward": sum(v for k, v in c["bookkeeping"].items() if "select" in k),
               "bookkeeping": c["bookkeeping"], "edges": len(circuit.edges),
               "faithfulness": circuit.metrics.get("faithfulness"), "cpu_seconds": time.process_time() - cpu}
    else:
        model = load_model(str(work / "gpt2-2layer"))
        started, cpu = time.perf_counter(), time.process_time()
        res = search(model, task, "acdc", metric="kl", tau=TAU, progress=False)
        cpu = time.process_time() - cpu
        from acdc_lite.graph import ModelGraph

        graph = ModelGraph.from_model(model)
        edges = sorted(str(e) for e in graph.edges_from_mask(res.kept))
        out.write_text(json.dumps(edges))
        row = {"seconds": time.perf_counter() - started, "cpu_seconds": cpu, "forward_equivalents": res.forward_passes,
               "floor": res.stats.get("floor_forward_passes"), "edges": len(edges), "edges_total": int(graph.valid.sum())}
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM; ru_maxrss would carry the parent's peak
    over fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(cmd: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit " + str(proc.returncode)])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(kind: str, n: int, work: Path, out: Path | None = None) -> dict:
    return _run([sys.executable, __file__, "--row", kind, str(n), "--work", str(work)] + (["--out", str(out)] if out else []))


def theirs(python: str, kind: str, n: int, work: Path, out: Path | None = None, selection: bool = True) -> dict:
    model = work / ("gpt2-small" if kind == "eap" else "gpt2-2layer")
    return _run([python, str(HERE / "peer_driver.py"), kind, "--model", str(model), "--prompts",
                 str(work / "prompts.safetensors"), "--n", str(n), "--tau", str(TAU), "--target", str(TARGET)]
                + (["--out", str(out)] if out else []) + ([] if selection else ["--no-selection"]))


class Finished:
    """Rows already measured in this work directory (rows.jsonl), so a stopped run resumes where it stopped."""

    def __init__(self, work: Path):
        self.path = work / "rows.jsonl"
        self.rows = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                r = json.loads(line)
                self.rows[(r["task"], r["tool"], r["n"])] = r["result"]

    def get(self, task: str, tool: str, n: int, measure) -> dict:
        if (task, tool, n) not in self.rows:
            result = measure()
            if "error" not in result:
                with open(self.path, "a") as fh:
                    fh.write(json.dumps({"task": task, "tool": tool, "n": n, "result": result}) + "\n")
            self.rows[(task, tool, n)] = result
        return self.rows[(task, tool, n)]


# ---- comparison ---------------------------------------------------------------------------------------------------
def same_logits(python: str, work: Path) -> float:
    """Max |difference| of last-position log-probabilities (first 4 prompts) between our bridge and their
    HookedTransformer (log-probabilities: transformer-lens centres the unembedding, shifting every logit alike)."""
    from safetensors.torch import load_file

    from acdc_lite import load_model
    from acdc_lite.padding import forward

    worst = 0.0
    for name in ("gpt2-small", "gpt2-2layer"):
        path = work / f"{name}-logits.safetensors"
        res = _run([python, str(HERE / "peer_driver.py"), "logits", "--model", str(work / name), "--prompts",
                    str(work / "prompts.safetensors"), "--n", "4", "--out", str(path)])
        if "error" in res:
            raise RuntimeError(f"peer driver failed: {res['error']}")
        with torch.no_grad():
            mine = forward(load_model(str(work / name)), _task(work, 4).clean)[:, -1]
        theirs_ = load_file(path)["logits"]
        worst = max(worst, float((mine.log_softmax(-1) - theirs_.log_softmax(-1)).abs().max()))
    return worst


def jaccard(work: Path, ours_file: Path, theirs_file: Path) -> tuple[float, float, int]:
    """Edge Jaccard of the two ACDC circuits: as found, and with dangling edges pruned from theirs as ours does."""
    from safetensors.torch import load_file

    from acdc_lite import load_model
    from acdc_lite.circuit import ModelRef
    from acdc_lite.interop.autocircuit import from_prune_scores
    from acdc_lite.search.common import prune_dangling

    model = load_model(str(work / "gpt2-2layer"))
    ref = ModelRef.of(model)
    circuit = from_prune_scores(load_file(theirs_file), ref)
    mine = set(json.loads(ours_file.read_text()))
    raw = set(circuit.edges)
    graph = ref.graph()
    pruned = {str(e) for e in graph.edges_from_mask(prune_dangling(graph, circuit.mask()))}

    def j(a, b):
        return len(a & b) / len(a | b) if a | b else 1.0

    return j(mine, raw), j(mine, pruned), len(pruned)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-python", help="python of auto-circuit's environment (omit: our rows only)")
    p.add_argument("--work", help="directory for the models and prompts (default: a temporary one)")
    p.add_argument("--row", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--theirs-selection-max", type=int, default=16,
                   help="run auto-circuit's EAP selection up to this many prompts (above: its scoring only)")
    args = p.parse_args()
    if args.row:
        print(json.dumps(our_row(args.row[0], int(args.row[1]), Path(args.work), Path(args.out) if args.out else None)))
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    write_models_and_prompts(work)
    peer = args.peer_python
    rows: list[dict] = []
    logit_gap = same_logits(peer, work) if peer else None
    done = Finished(work)
    acdc = []
    got = {}
    for tool in ("ours", "theirs"):
        if tool == "theirs" and not peer:
            continue
        out = work / f"acdc-{tool}.{'json' if tool == 'ours' else 'safetensors'}"
        got[tool] = done.get("acdc", tool, ACDC_PROMPTS, lambda tool=tool, out=out: ours("acdc", ACDC_PROMPTS, work, out)
                             if tool == "ours" else theirs(peer, "acdc", ACDC_PROMPTS, work, out))
        print("acdc", tool, got[tool], flush=True)
    if got.get("theirs") and "error" not in got["theirs"] and "error" not in got["ours"]:
        raw, pruned, n_pruned = jaccard(work, work / "acdc-ours.json", work / "acdc-theirs.safetensors")
        got["jaccard"], got["jaccard_dangling_pruned"], got["theirs_edges_dangling_pruned"] = raw, pruned, n_pruned
    acdc.append(got)
    write_tables(rows, acdc, logit_gap, bool(peer), args.theirs_selection_max)
    for n in EAP_PROMPTS:
        first, second = ("ours", "theirs") if n % 32 else ("theirs", "ours")  # alternate who runs first
        got = {}
        for tool in (first, second):
            if tool == "ours":
                got[tool] = done.get("eap", tool, n, lambda n=n: ours("eap", n, work))
            elif peer:
                got[tool] = done.get("eap", tool, n, lambda n=n: theirs(peer, "eap", n, work,
                                                                        selection=n <= args.theirs_selection_max))
            print(n, tool, got.get(tool), flush=True)
        rows.append({"task": "eap", "prompts": n, **{f"{t}_{k}": v for t, r in got.items() for k, v in r.items()}})
        write_tables(rows, acdc, logit_gap, bool(peer), args.theirs_selection_max)  # a partial table survives a stop


def _f(x, nd=1):
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def write_tables(rows: list[dict], acdc: list[dict], logit_gap: float | None, with_peer: bool, selection_max: int) -> None:
    flat = rows + [{"task": "acdc", "prompts": ACDC_PROMPTS, "repeat": i,
                    **{f"{t}_{k}": v for t, r in a.items() if isinstance(r, dict) for k, v in r.items() if k != "bookkeeping"},
                    **{k: v for k, v in a.items() if not isinstance(v, dict)}} for i, a in enumerate(acdc)]
    keys = sorted({k for r in flat for k in r if "bookkeeping" not in k})
    with open(HERE / "peer.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(flat)
    lines = ["# acdc-lite beside auto-circuit 1.0.1", "",
             f"`python benchmarks/bench_peer.py --peer-python <auto-circuit venv>/bin/python` on {platform.machine()}, "
             f"{os.cpu_count()} cores shared with other jobs, OMP_NUM_THREADS=1, torch {torch.__version__}. "
             "Models: Hugging Face GPT-2 directories with random weights (seeded), loaded by us as a TransformerBridge and by "
             "auto-circuit as a transformer-lens 2.16 HookedTransformer from the same weights"
             + (f" (last-position log-probabilities agree to {logit_gap:.1e})" if logit_gap is not None else "")
             + f"; prompts: the same saved token ids ({SEQ_LEN} tokens, ids < {VOCAB_USED}). Each row is its own "
             "process; peak RSS (VmHWM) includes loading the model. The tools' rows alternate. Forward-equivalents: passes over "
             "all prompts, a pass over layers l.. of L counting (L - l) / L; ours leave out the one corrupted-activation "
             "cache pass, theirs count every model call. Rows already in <work>/rows.jsonl (a stopped run) are reused, not "
             "re-measured. Random weights: the clean-corrupt gap is small, so circuit "
             "sizes say little; this table is about cost.", ""]
    if not with_peer:
        lines += ["auto-circuit was not run (no --peer-python): our rows only.", ""]
    lines += ["## EAP at GPT-2-small shape (12 layers x 12 heads, d_model 768, 32,491 edges)", "",
              "Ours: `discover(model, task, 'eap')` (logit difference; selection = smallest top-n reaching 0.9 "
              "faithfulness). Theirs: `mask_gradient_prune_scores(grad_function='logit', answer_function='avg_diff', "
              "mask_val=0.0)` with batch size 16, then `run_circuits` over `edge_counts_util`'s default counts and "
              f"`measure_answer_diff_percent`, smallest count recovering 90%. Their selection was run up to {selection_max} "
              "prompts; above that only their scoring was (theirs s = scoring alone, so the ratio there understates "
              "what a user waits for).", "",
              "| prompts | ours s (CPU s) | ours fwd-eq (+bwd) | ours selection fwd | ours peak MB | theirs s (CPU s) "
              "| theirs scoring s | theirs fwd-eq | theirs counts tried | theirs peak MB | speed ratio (CPU) | memory ratio |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (r["theirs_seconds"] / r["ours_seconds"]) if "theirs_seconds" in r and "ours_seconds" in r else None
        mem = (r["theirs_peak_rss_mb"] / r["ours_peak_rss_mb"]) if "theirs_peak_rss_mb" in r and "ours_peak_rss_mb" in r else None
        cpu = (r["theirs_cpu_seconds"] / r["ours_cpu_seconds"]) if "theirs_cpu_seconds" in r and "ours_cpu_seconds" in r else None
        lines.append(f"| {r['prompts']} | {_f(r.get('ours_seconds'))} ({_f(r.get('ours_cpu_seconds'))}) "
                     f"| {_f(r.get('ours_forward_equivalents'))} "
                     f"(+{_f(r.get('ours_backward'))}) | {_f(r.get('ours_selection_forward'))} | {_f(r.get('ours_peak_rss_mb'), 0)} "
                     f"| {_f(r.get('theirs_seconds'))} ({_f(r.get('theirs_cpu_seconds'))}) | {_f(r.get('theirs_scoring_seconds'))} "
                     f"| {_f(r.get('theirs_forward_equivalents'))} | {_f(r.get('theirs_selection_counts'))} "
                     f"| {_f(r.get('theirs_peak_rss_mb'), 0)} | {_f(ratio)}x ({_f(cpu)}x) | {_f(mem)}x |")
        for t in ("ours", "theirs"):
            if f"{t}_error" in r:
                lines.append(f"| | {t} failed: {r[t + '_error']} |")
    lines += ["", f"## Exact ACDC on a 2-layer GPT-2 (8 heads, d_model 256), KL, tau {TAU}, {ACDC_PROMPTS} prompts", "",
              "Ours: `search(model, task, 'acdc', metric='kl', tau=0.01)`. Theirs: `acdc_prune_scores(tao_bases=[0.01], "
              "tao_exps=[0], faithfulness_target='kl_div')` on one batch of all prompts (kept = score inf). Their edge "
              "names are mapped to ours through the PruneScores layout (acdc_lite.interop.autocircuit). ACDC visits "
              "edges in a different order in each tool (ours: per receiver, latest sender first), so the circuits may differ; "
              "auto-circuit sorts its edges by layer out of a Python set, so within a layer its order (and its circuit) "
              "changes with the process's string-hash seed (PYTHONHASHSEED).",
              "", "| run | ours s (CPU s) | ours fwd-eq | ours edges | theirs s (CPU s) | theirs fwd-eq | theirs calls "
              "| theirs edges (dangling pruned) | speed ratio (CPU) | Jaccard | Jaccard, theirs dangling-pruned |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, a in enumerate(acdc):
        o, t = a.get("ours") or {}, a.get("theirs") or {}
        ratio = t["seconds"] / o["seconds"] if "seconds" in t and "seconds" in o else None
        cpu = t["cpu_seconds"] / o["cpu_seconds"] if "cpu_seconds" in t and "cpu_seconds" in o else None
        lines.append(f"| {i} | {_f(o.get('seconds'), 2)} ({_f(o.get('cpu_seconds'), 2)}) | {_f(o.get('forward_equivalents'))} "
                     f"| {_f(o.get('edges'))} of {_f(o.get('edges_total'))} | {_f(t.get('seconds'), 2)} "
                     f"({_f(t.get('cpu_seconds'), 2)}) | {_f(t.get('forward_equivalents'))} | {_f(t.get('model_calls'))} "
                     f"| {_f(t.get('edges'))} ({_f(a.get('theirs_edges_dangling_pruned'))}) | {_f(ratio)}x ({_f(cpu)}x) "
                     f"| {_f(a.get('jaccard'), 3)} | {_f(a.get('jaccard_dangling_pruned'), 3)} |")
        for tool, r in (("ours", o), ("theirs", t)):
            if "error" in r:
                lines.append(f"| | {tool} failed: {r['error']} |")
    (HERE / "peer.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
