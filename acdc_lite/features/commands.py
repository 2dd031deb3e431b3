"""What `acdc-lite sae train` and `acdc-lite probe` run: check the folder, load, compute, write, record.

Each owns its `--out` folder for the run (`acdc_lite.runs.RunLock`), writes its outputs atomically and the run
record `run.json` last (with the headline numbers under `results`); bad input fails before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from acdc_lite.boundary import UsageError
from acdc_lite.runs import DEFAULT_INTERVAL, RECORD, RunLock, RunRecord, check_output_dir, interruptible, write_atomic

TRAIN_CHECKPOINT = "checkpoint.safetensors"
SAE_OUTPUTS = ("dictionary.safetensors", "dictionary.json", "report.json", "report.md")
PROBE_OUTPUTS = ("probes.csv", "probes.png", "probes.svg", "report.json", "report.md")


def model_and_task(model: str | None, task: str | None, n_examples: int, seed: int):
    """(hooked model, task): the default model is discover's; the default task a zoo model's own."""
    if n_examples < 1:
        raise UsageError(f"--n-examples must be at least 1, got {n_examples}")
    from acdc_lite import zoo
    from acdc_lite.models import load_model
    from acdc_lite.pipeline import DEFAULT_MODEL
    from acdc_lite.task import load_task

    name = model or DEFAULT_MODEL
    if task is None:
        if not zoo.exists(name):
            raise UsageError(f"--task is needed for {name!r} (only zoo models have a default task)")
        task = zoo.card(name)["task"]["name"]
    hooked = load_model(name)
    return hooked, load_task(task, hooked, n_examples=n_examples, seed=seed)


def _claim(out: Path, outputs: tuple[str, ...], force: bool, resume: bool = False) -> Path:
    out = check_output_dir(out)
    interrupted = (out / TRAIN_CHECKPOINT).is_file()
    if interrupted and not (resume or force):
        raise UsageError(f"{out} holds an interrupted training run ({TRAIN_CHECKPOINT}); continue it with the same options "
                         "plus --resume, or pass --force to start over")
    if resume and not interrupted:
        raise UsageError(f"nothing to resume in {out}: no {TRAIN_CHECKPOINT} (a finished run removes it); run without --resume")
    finished = [n for n in (*outputs, RECORD) if (out / n).exists() and not (interrupted and n == RECORD)]
    if finished and not force:
        raise UsageError(f"{out} already holds a run ({', '.join(finished)}); pass --force to overwrite it, or choose another --out")
    return out


def train_sae_into(out: str | Path, config, *, model: str | None = None, task: str | None = None, n_examples: int = 3000,
                   edge: str | None = None, variable: str = "answer", value: int | None = None, force: bool = False,
                   resume: bool = False, checkpoint_interval: float = DEFAULT_INTERVAL, progress: bool = True,
                   tokens: str | Path | None = None, window: int | None = None) -> dict:
    """Train a dictionary (`acdc_lite.features.sae.SAEConfig`) and, with `edge`, tie a feature to `variable`
    through it (`acdc_lite.features.attribution.feature_study`); write the dictionary, report.json, report.md
    and run.json into `out`. Training is checkpointed to OUT/checkpoint.safetensors every `checkpoint_interval`
    seconds and on Ctrl-C/SIGTERM; `resume` continues it. With `tokens` (a text file) the dictionary is trained on
    that token stream cut into windows of `window` tokens (default: the task's prompt length). Returns the report."""
    from .attribution import feature_study, top_examples
    from .sae import token_stream, train_dictionary
    from .variables import VARIABLES

    out = _claim(Path(out), SAE_OUTPUTS, force, resume)
    if variable not in VARIABLES:
        raise UsageError(f"unknown --variable {variable!r}; choose one of {', '.join(sorted(VARIABLES))}")
    if window is not None and tokens is None:
        raise UsageError("--window only applies with --tokens (a token stream to train on)")
    settings = {"model": model, "task": task, "n_examples": n_examples, "edge": edge, "variable": variable,
                "value": value, "tokens": str(tokens) if tokens is not None else None, "window": window, **asdict(config)}
    with RunLock(out, settings, command="sae train"), interruptible():
        if force and not resume:
            for name in (*SAE_OUTPUTS, RECORD, TRAIN_CHECKPOINT):
                (out / name).unlink(missing_ok=True)
        record = RunRecord(out, "sae train", settings).start(resume=resume)
        hooked, t = model_and_task(model, task, n_examples, config.seed)
        stream = token_stream(hooked, tokens, window or t.seq_len) if tokens is not None else None
        try:
            trained = train_dictionary(hooked, t, config, progress=progress, checkpoint=out / TRAIN_CHECKPOINT,
                                       resume=resume, checkpoint_interval=checkpoint_interval, stream=stream)
        except KeyboardInterrupt:
            if (out / TRAIN_CHECKPOINT).is_file():
                record.finish("interrupted")
            raise
        report = {"model": trained.dictionary.info["model"], "task": t.name, "site": trained.dictionary.site.name,
                  "config": asdict(config), "training_data": trained.dictionary.info["training_data"],
                  "reconstruction": trained.report.to_dict()}
        if edge is not None:
            study = feature_study(hooked, t, trained.dictionary, edge, trained.train_idx, trained.heldout_idx,
                                  variable=variable, value=value, seed=config.seed)
            report["feature"] = study.to_dict()
            report["feature"]["top_examples"] = top_examples(hooked, t.subset(trained.heldout_idx), trained.dictionary,
                                                             study.headline.feature)
        files = trained.dictionary.save(out)
        write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
        write_atomic(out / "report.md", sae_markdown(report))
        r = trained.report
        results = {"fvu": r.fvu, "l0": r.l0, "dead": r.dead, "metric_model": r.metric_model, "metric_spliced": r.metric_spliced,
                   "metric_change": round(r.metric_change, 4)}
        if edge is not None:
            h = report["feature"]["headline"]
            results.update(feature=h["feature"], heldout_auroc=h["heldout_auroc"], edge_share=h["share"],
                           random_share_mean=report["feature"]["random_share_mean"])
        (out / TRAIN_CHECKPOINT).unlink(missing_ok=True)
        record.finish("finished", outputs=[f.name for f in files] + ["report.json", "report.md"],
                      run={"task": t.name, "model": report["model"], "method": f"sae {config.site}"}, results=results)
    return report


def sae_markdown(report: dict) -> str:
    r = report["reconstruction"]
    lines = [f"# Dictionary on {report['site']} of {report['model']} ({report['task']})", "",
             "| FVU | L0 | dead | latents | metric (model) | metric (spliced) | change | CE (model) | CE (spliced) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {r['fvu']:.4f} | {r['l0']:.2f} | {r['dead']} | {r['n_latents']} | {r['metric_model']:.4f} | "
             f"{r['metric_spliced']:.4f} | {r['metric_change']:.2%} | {r['ce_model']:.4f} | {r['ce_spliced']:.4f} |", "",
             f"Measured on {r['n_heldout_examples']} held-out examples (trained on {r['n_train_vectors']} activations of "
             + (f"{r['n_train_examples']} other examples' clean and corrupted prompts" if report["training_data"]["source"]
                == "task prompts" else f"a token stream: {report['training_data']['windows']} windows of "
                f"{report['training_data']['window']} tokens") + f"); metric: {r['metric']}."]
    f = report.get("feature")
    if f:
        h = f["headline"]
        shares = [v["share"] for v in f["values"]]
        aucs = [v["heldout_auroc"] for v in f["values"]]
        lines += ["", f"## Feature for {f['variable']} through {f['edge']}", "",
                  f"Headline value {h['value']}: feature {h['feature']} (training AUROC {h['train_auroc']:.3f}), held-out "
                  f"AUROC {h['heldout_auroc']:.3f}; ablating it through the edge removes {h['share']:.1%} of the edge's "
                  f"effect ({h['feature_effect']:.4f} of {h['edge_effect']:.4f}) on {h['n_heldout_positive']} held-out "
                  f"examples; {len(f['random_shares'])} random active features: mean share {f['random_share_mean']:.1%}, "
                  f"max {f['random_share_max']:.1%}.", "",
                  f"Every value with enough examples ({len(shares)}): held-out AUROC >= 0.9 for "
                  f"{sum(a >= 0.9 for a in aucs)}, share >= 0.5 for {sum(s >= 0.5 for s in shares)}, median share "
                  f"{sorted(shares)[len(shares) // 2]:.2f}.", "",
                  "| value | feature | train AUROC | held-out AUROC | edge effect | feature effect | share |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['value']} | {v['feature']} | {v['train_auroc']:.3f} | {v['heldout_auroc']:.3f} | {v['edge_effect']:.4f} | "
                  f"{v['feature_effect']:.4f} | {v['share']:.3f} |" for v in f["values"]]
        if f.get("top_examples"):
            lines += ["", f"Top activations of feature {h['feature']} on held-out prompts:", "",
                      "| example | position | token | four tokens before | activation | answer there |", "|---|---|---|---|---|---|"]
            lines += [f"| {e['example']} | {e['position']} | {e['token']} | {' '.join(e['before'])} | {e['activation']:.3f} | "
                      f"{e['answer']} |" for e in f["top_examples"]]
    return "\n".join(lines) + "\n"


def probe_into(out: str | Path, variable: str, *, model: str | None = None, task: str | None = None, n_examples: int = 2000,
               sites: list[str] | None = None, heads: bool = True, holdout: float = 0.3, seed: int = 0, c: float = 1.0,
               force: bool = False) -> dict:
    """Linear probes for `variable` at every site (`acdc_lite.features.probes.run_probes`); write probes.csv, the
    plot (probes.png, probes.svg), report.json, report.md and run.json into `out`. Returns the report."""
    from .probes import _sklearn, run_probes
    from .variables import VARIABLES

    out = _claim(Path(out), PROBE_OUTPUTS, force)
    if variable not in VARIABLES:
        raise UsageError(f"unknown --variable {variable!r}; choose one of {', '.join(sorted(VARIABLES))}")
    if not 0 < holdout < 1:
        raise UsageError(f"--holdout must be between 0 and 1, got {holdout}")
    if not c > 0:
        raise UsageError(f"--c must be > 0, got {c}")
    if n_examples < 4:
        raise UsageError(f"--n-examples must be at least 4 (train and test splits), got {n_examples}")
    _sklearn()
    settings = {"model": model, "task": task, "variable": variable, "n_examples": n_examples, "sites": sites, "heads": heads,
                "holdout": holdout, "seed": seed, "c": c}
    with RunLock(out, settings, command="probe"), interruptible():
        if force:
            for name in (*PROBE_OUTPUTS, RECORD):
                (out / name).unlink(missing_ok=True)
        record = RunRecord(out, "probe", settings).start()
        hooked, t = model_and_task(model, task, n_examples, seed)
        report = run_probes(hooked, t, variable, sites=sites, heads=heads, holdout=holdout, seed=seed, c=c)
        fig = report.figure()
        written = []
        for fmt in ("png", "svg"):
            import io

            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=120)
            write_atomic(out / f"probes.{fmt}", buf.getvalue())
            written.append(f"probes.{fmt}")
        write_atomic(out / "probes.csv", report.to_frame().to_csv(index=False))
        d = report.to_dict()
        write_atomic(out / "report.json", json.dumps(d, indent=1) + "\n")
        write_atomic(out / "report.md", probe_markdown(d))
        best = max(report.rows, key=lambda r: r.selectivity)
        record.finish("finished", outputs=["probes.csv", *written, "report.json", "report.md"],
                      run={"task": t.name, "model": report.model, "method": f"probe {variable}"},
                      results={"best_site": best.site, "best_accuracy": best.accuracy, "best_selectivity": best.selectivity,
                               "majority": report.majority})
    return d


def probe_markdown(d: dict) -> str:
    lines = [f"# Linear probes for {d['variable']}: {d['model']} on {d['task']}", "",
             f"{d['n_classes']} classes; majority class on the test split {d['majority']:.3f}. Control: the same probe on "
             "labels shuffled across examples.", "", "![accuracy by layer](probes.png)", "",
             "| site | layer | accuracy | control | selectivity | train | test |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['site']} | {r['layer']} | {r['accuracy']:.3f} | {r['control_accuracy']:.3f} | {r['selectivity']:+.3f} | "
              f"{r['n_train']} | {r['n_test']} |" for r in d["rows"]]
    return "\n".join(lines) + "\n"
