"""Sparse dictionaries (autoencoders and transcoders) on one site of a model, trained on a task's prompts.

The dictionary is eai-sparsify's `SparseCoder` (TopK activation; `pip install 'acdc-lite[features]'`). Its own
`Trainer` hooks Hugging Face modules by name and streams a tokenized dataset, so it cannot read our hook sites
(a head's result, TransformerLens hook names, models that are not Hugging Face ones) or train on a task's
prompts; the loop here feeds it activations we collect: Adam on the fraction of variance unexplained (FVU),
decoder rows kept at unit norm, decoder bias started at the data mean, batches drawn by a seeded generator.

Examples are split once (`split_examples`): training reads only the training examples' activations (clean and
corrupted prompts, every real position); every reported number is measured on the held-out examples' clean
prompts: FVU, L0 (mean active latents per position), dead latents (never active on the training activations),
the task metric and the next-token cross-entropy of the model and of the model with the dictionary spliced in.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from acdc_lite.models import fingerprint
from acdc_lite.padding import forward
from acdc_lite.shape import model_info
from acdc_lite.task import Task

from .sites import Site, collect, parse_site

log = logging.getLogger(__name__)

FORMAT = "acdc-lite dictionary"
VERSION = 1
WEIGHTS, META = "dictionary.safetensors", "dictionary.json"


def _sparsify():
    try:
        import sparsify
    except ImportError as e:
        raise ImportError(f"dictionaries need eai-sparsify ({e}); install it with pip install 'acdc-lite[features]'") from None
    return sparsify


@dataclass(frozen=True)
class SAEConfig:
    """Training settings. holdout: share of the task's examples kept out of training for every reported number."""

    site: str = "a1.h0"
    transcoder: bool = False
    n_latents: int = field(default=96, metadata={"ge": 1})
    k: int = field(default=3, metadata={"ge": 1})
    steps: int = field(default=1500, metadata={"ge": 1})
    batch_size: int = field(default=512, metadata={"ge": 1})
    lr: float = field(default=2e-3, metadata={"gt": 0})
    holdout: float = field(default=0.3, metadata={"gt": 0, "lt": 1})
    seed: int = 0

    def __post_init__(self):
        for name, f in self.__dataclass_fields__.items():
            value, bounds = getattr(self, name), f.metadata
            if ("ge" in bounds and not value >= bounds["ge"]) or ("gt" in bounds and not value > bounds["gt"]) \
                    or ("lt" in bounds and not value < bounds["lt"]):
                rule = ", ".join(f"{k} {v}" for k, v in bounds.items())
                raise ValueError(f"{name.replace('_', '-')} = {value} is out of range ({rule})")
        if self.k > self.n_latents:
            raise ValueError(f"k = {self.k} active latents cannot exceed n-latents = {self.n_latents}")


def split_examples(task: Task, holdout: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) example indices. A prompt's side is decided by a seeded hash of its clean tokens, so
    duplicate prompts never straddle the split; both sides are non-empty when the task has two distinct prompts."""
    keys = [hash((seed, tuple(row.tolist()))) % 1_000_003 / 1_000_003 for row in task.clean]
    held = torch.tensor([k < holdout for k in keys])
    if held.all() or not held.any():  # tiny tasks: fall back to a seeded permutation by distinct prompt
        distinct = sorted({tuple(r.tolist()) for r in task.clean}, key=lambda r: hash((seed, r)))
        if len(distinct) < 2:
            raise ValueError(f"task {task.name!r} has one distinct prompt; a held-out split needs at least two")
        n_held = min(len(distinct) - 1, max(1, round(holdout * len(distinct))))
        chosen = set(distinct[:n_held])
        held = torch.tensor([tuple(r.tolist()) in chosen for r in task.clean])
    idx = torch.arange(len(task))
    return idx[~held], idx[held]


class Dictionary(nn.Module):
    """A trained sparse dictionary on `site`: `encode` [..., d] -> [..., n_latents] (dense, mostly zero),
    `decode` back, `reconstruct` = decode(encode); `info` holds the config, the model and the report."""

    def __init__(self, site: Site, coder: nn.Module, info: dict):
        super().__init__()
        self.site, self.coder, self.info = site, coder, info

    @property
    def n_latents(self) -> int:
        return self.coder.num_latents

    @property
    def W_dec(self) -> torch.Tensor:
        """[n_latents, d] decoder directions (unit norm)."""
        return self.coder.W_dec

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        acts, idx, _ = self.coder.encode(x.reshape(-1, shape[-1]).to(self.coder.encoder.weight.dtype))
        dense = acts.new_zeros(len(acts), self.n_latents).scatter_(-1, idx, acts)
        return dense.reshape(*shape[:-1], self.n_latents)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.coder.W_dec + self.coder.b_dec

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).to(x.dtype)

    def save(self, directory: str | Path) -> list[Path]:
        """dictionary.safetensors (weights) and dictionary.json (site, sizes, info), each written atomically."""
        from safetensors.torch import save

        from acdc_lite.runs import write_atomic

        directory = Path(directory)
        weights = {k: v.detach().contiguous().cpu() for k, v in self.coder.state_dict().items()}
        write_atomic(directory / WEIGHTS, save(weights))
        meta = {"format": FORMAT, "version": VERSION, "site": asdict(self.site), "d_in": self.coder.d_in,
                "n_latents": self.n_latents, "k": self.coder.cfg.k, **self.info}
        write_atomic(directory / META, json.dumps(meta, indent=1) + "\n")
        return [directory / WEIGHTS, directory / META]

    @classmethod
    def load(cls, directory: str | Path) -> Dictionary:
        from safetensors.torch import load_file

        from acdc_lite.boundary import InputError, read_json_object

        directory = Path(directory)
        meta = read_json_object(directory / META, "dictionary")
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise InputError(f"{directory / META} is not an acdc-lite dictionary of version {VERSION}; train one with "
                             "acdc-lite sae train")
        sp = _sparsify()
        coder = sp.SparseCoder(meta["d_in"], sp.SparseCoderConfig(num_latents=meta["n_latents"], k=meta["k"],
                                                                  transcode=meta["site"]["read"] != meta["site"]["write"]))
        coder.load_state_dict(load_file(str(directory / WEIGHTS)))
        info = {k: v for k, v in meta.items() if k not in ("format", "version", "site", "d_in", "n_latents", "k")}
        return cls(Site(**meta["site"]), coder.eval(), info)


@dataclass(frozen=True)
class DictionaryReport:
    """Reconstruction on the held-out examples (see module docstring). metric_*: the task metric (mean over
    held-out examples); ce_*: next-token cross-entropy over their real positions (nats)."""

    fvu: float
    l0: float
    dead: int
    n_latents: int
    metric: str
    metric_model: float
    metric_spliced: float
    ce_model: float
    ce_spliced: float
    n_train_vectors: int
    n_train_examples: int
    n_heldout_examples: int
    seconds: float

    @property
    def metric_change(self) -> float:
        """|spliced - model| / |model|."""
        return abs(self.metric_spliced - self.metric_model) / max(abs(self.metric_model), 1e-12)

    def to_dict(self) -> dict:
        return {**asdict(self), "metric_change": round(self.metric_change, 4)}


@dataclass(frozen=True)
class TrainedDictionary:
    dictionary: Dictionary
    report: DictionaryReport
    train_idx: torch.Tensor
    heldout_idx: torch.Tensor


def _vectors(model, task: Task, site: Site, idx: torch.Tensor, target: bool = False) -> torch.Tensor:
    """[M, d] activations at the real positions of the clean and corrupted prompts of examples `idx`."""
    mask = task.attention_mask[idx]
    out = [collect(model, tokens[idx], mask, site, target=target)[mask] for tokens in (task.clean, task.corrupt)]
    return torch.cat(out)


def train_dictionary(model: nn.Module, task: Task, config: SAEConfig, progress: bool = True) -> TrainedDictionary:
    """Train a dictionary on `config.site` of `model` from `task`'s training examples and report it on the
    held-out ones (see the module docstring)."""
    from tqdm.auto import tqdm

    sp = _sparsify()
    start = time.perf_counter()
    site = parse_site(config.site, model, config.transcoder)
    train_idx, held_idx = split_examples(task, config.holdout, config.seed)
    x = _vectors(model, task, site, train_idx)
    y = _vectors(model, task, site, train_idx, target=True) if site.transcoder else None
    torch.manual_seed(config.seed)
    coder = sp.SparseCoder(x.shape[-1], sp.SparseCoderConfig(num_latents=config.n_latents, k=config.k,
                                                             transcode=site.transcoder))
    if not site.transcoder:
        coder.b_dec.data = x.mean(0)
    opt = torch.optim.Adam(coder.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed)
    fired = torch.zeros(config.n_latents, dtype=torch.bool)
    bar = tqdm(range(config.steps), desc=f"dictionary on {site.name}", disable=not progress, mininterval=1.0)
    for _ in bar:
        b = torch.randint(0, len(x), (min(config.batch_size, len(x)),), generator=g)
        target = y[b] if y is not None else None
        out = coder(x[b], target)
        opt.zero_grad()
        out.fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        coder.set_decoder_norm_to_unit_norm()
        fired[out.latent_indices[out.latent_acts > 0].unique()] = True
        bar.set_postfix(fvu=f"{float(out.fvu.detach()):.3f}", refresh=False)
    coder.eval()
    info = {"model": model_info(model).name, "model_fingerprint": fingerprint(model), "task": task.name,
            "config": asdict(config)}
    dictionary = Dictionary(site, coder, info)
    with torch.no_grad():
        usage = torch.zeros(config.n_latents, dtype=torch.bool)
        for i in range(0, len(x), 4096):
            usage |= (dictionary.encode(x[i:i + 4096]) > 0).any(0)
    report = evaluate(model, task, dictionary, held_idx, n_train_vectors=len(x), n_train_examples=len(train_idx),
                      dead=int((~usage).sum()), start=start)
    dictionary.info["report"] = report.to_dict()
    dictionary.info["split"] = {"train": train_idx.tolist(), "heldout": held_idx.tolist()}
    return TrainedDictionary(dictionary, report, train_idx, held_idx)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, dictionary: Dictionary, idx: torch.Tensor, *, n_train_vectors: int = 0,
             n_train_examples: int = 0, dead: int = -1, start: float | None = None, metric: str | None = None) -> DictionaryReport:
    """The reconstruction numbers of `dictionary` on examples `idx` of `task` (see the module docstring)."""
    from .splice import spliced

    site = dictionary.site
    sub = task.subset(idx)
    mask = sub.attention_mask
    x = collect(model, sub.clean, mask, site)[mask]
    y = collect(model, sub.clean, mask, site, target=True)[mask] if site.transcoder else x
    f = dictionary.encode(x)
    recon = dictionary.decode(f)
    fvu = float((y - recon).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    l0 = float((f > 0).sum(-1).float().mean())
    name = metric or sub.default_metric
    m = sub.metric(name, model)
    rows = torch.arange(len(sub))

    def measure() -> tuple[float, float]:
        logits = forward(model, sub.clean, mask)
        return float(m(logits, rows).mean()), _cross_entropy(logits, sub.clean, mask)

    metric_model, ce_model = measure()
    with spliced(model, dictionary):
        metric_spliced, ce_spliced = measure()
    return DictionaryReport(round(fvu, 5), round(l0, 3), dead, dictionary.n_latents, name, round(metric_model, 5),
                            round(metric_spliced, 5), round(ce_model, 5), round(ce_spliced, 5), n_train_vectors,
                            n_train_examples, len(idx), round(time.perf_counter() - start, 2) if start else 0.0)


def _cross_entropy(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean next-token cross-entropy over positions whose next token is real."""
    lp = logits[:, :-1].float().log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    real = mask[:, 1:] & mask[:, :-1]
    return float(-(lp[real]).mean())
