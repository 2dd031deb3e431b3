"""Sparse dictionaries (autoencoders and transcoders) on one site of a model, trained on a task's prompts.

The dictionary is eai-sparsify's `SparseCoder` (TopK activation; `pip install 'acdc-lite[features]'`). Its own
`Trainer` hooks Hugging Face modules by name and streams a tokenized dataset, so it cannot read our hook sites
(a head's result, TransformerLens hook names, models that are not Hugging Face ones) or train on a task's
prompts; the loop here feeds it activations we collect: Adam on the fraction of variance unexplained (FVU),
decoder rows kept at unit norm, decoder bias started at the data mean, batches drawn by a seeded generator.

Examples are split once (`split_examples`). Training reads the training examples' activations (clean and
corrupted prompts, every real position), or those of a token stream (`token_stream`: a text file tokenised by
the model's own tokenizer, cut into windows). Every reported number is measured on the held-out examples' clean
prompts: FVU, L0 (mean active latents per position), dead latents (never active on the training activations),
the task metric and the next-token cross-entropy of the model and of the model with the dictionary spliced in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from acdc_lite.boundary import UsageError
from acdc_lite.models import fingerprint
from acdc_lite.padding import forward
from acdc_lite.pipeline import task_hash
from acdc_lite.runs import DEFAULT_INTERVAL, Terminated, canonical_hash
from acdc_lite.shape import model_info
from acdc_lite.task import Task

from .sites import Site, collect, parse_site

log = logging.getLogger(__name__)

FORMAT = "acdc-lite dictionary"
VERSION = 1
WEIGHTS, META = "dictionary.safetensors", "dictionary.json"
CHECKPOINT_FORMAT = "acdc-lite dictionary training checkpoint 1"


def _sparsify():
    """eai-sparsify, imported with its import-time print ("Triton not installed, ...") sent to the log instead."""
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            import sparsify
        if said.getvalue().strip():
            log.info("eai-sparsify: %s", said.getvalue().strip())
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
                raise UsageError(f"--{name.replace('_', '-')} {value} is out of range ({rule})")
        if self.k > self.n_latents:
            raise UsageError(f"--k {self.k} active latents cannot exceed --n-latents {self.n_latents}")


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


def token_stream(model: nn.Module, path: str | Path, window: int) -> torch.Tensor:
    """[M, window] token ids: the text file at `path` tokenised with the model's tokenizer (or word vocabulary), cut
    into consecutive windows that each start with BOS when the vocabulary has one; a shorter tail is dropped."""
    from acdc_lite.boundary import InputError, read_text
    from acdc_lite.task import TaskError, Vocabulary

    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if window < 2 or (n_ctx is not None and window > n_ctx):
        raise UsageError(f"--window {window}: give 2 to {n_ctx or 'the model context'} tokens")
    text = read_text(path, "token stream")
    try:
        vocab = Vocabulary.of(model)
    except TaskError:
        raise UsageError(f"--tokens {path}: this model has no tokenizer or word vocabulary to read text with; train on "
                         "the task's prompts (without --tokens)") from None
    try:
        ids = vocab.encode(text)
    except TaskError as e:
        raise InputError(f"token stream {path}: {e}") from None
    bos = vocab.bos
    body = window - (bos is not None)
    n = len(ids) // body
    if n == 0:
        raise InputError(f"token stream {path}: {len(ids)} tokens, fewer than one window of {body}; give more text or a "
                         "smaller --window")
    rows = torch.tensor(ids[:n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], 1) if bos is not None else rows


def train_dictionary(model: nn.Module, task: Task, config: SAEConfig, progress: bool = True,
                     checkpoint: str | Path | None = None, resume: bool = False,
                     checkpoint_interval: float = DEFAULT_INTERVAL, stream: torch.Tensor | None = None) -> TrainedDictionary:
    """Train a dictionary on `config.site` of `model` from `task`'s training examples (or from `stream`, [M, P]
    token ids, e.g. `token_stream`) and report it on the held-out examples (see the module docstring). With
    `checkpoint` (a file) the training state is saved there every `checkpoint_interval` seconds and on
    Ctrl-C/SIGTERM; `resume` continues from it (refusing other settings) to the weights of an uninterrupted run
    (same thread count)."""
    from tqdm.auto import tqdm

    sp = _sparsify()
    start = time.perf_counter()
    site = parse_site(config.site, model, config.transcoder)
    train_idx, held_idx = split_examples(task, config.holdout, config.seed)
    if stream is None:
        x = _vectors(model, task, site, train_idx)
        y = _vectors(model, task, site, train_idx, target=True) if site.transcoder else None
        data = {"source": "task prompts", "examples": len(train_idx)}
    else:
        full = torch.ones_like(stream, dtype=torch.bool)
        x = collect(model, stream, full, site).flatten(0, 1)
        y = collect(model, stream, full, site, target=True).flatten(0, 1) if site.transcoder else None
        data = {"source": "token stream", "windows": len(stream), "window": stream.shape[1]}
    torch.manual_seed(config.seed)
    coder = sp.SparseCoder(x.shape[-1], sp.SparseCoderConfig(num_latents=config.n_latents, k=config.k,
                                                             transcode=site.transcoder))
    if not site.transcoder:
        coder.b_dec.data = x.mean(0)
    opt = torch.optim.Adam(coder.parameters(), lr=config.lr)
    g = torch.Generator().manual_seed(config.seed)
    stream_hash = hashlib.sha256(stream.numpy().tobytes()).hexdigest() if stream is not None else None
    state = _TrainState(coder, opt, g, canonical_hash({"config": asdict(config), "model": fingerprint(model),
                                                       "task": task_hash(task), "stream": stream_hash}))
    first = state.load(Path(checkpoint)) if resume and checkpoint is not None else 0
    last_save = time.monotonic()
    bar = tqdm(range(first, config.steps), desc=f"dictionary on {site.name}", disable=not progress, mininterval=1.0,
               initial=first, total=config.steps)
    with _deferred_signals() as stopped:
        for step in bar:
            b = torch.randint(0, len(x), (min(config.batch_size, len(x)),), generator=g)
            out = coder(x[b], y[b] if y is not None else None)
            opt.zero_grad()
            out.fvu.backward()
            coder.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            coder.set_decoder_norm_to_unit_norm()
            bar.set_postfix(fvu=f"{float(out.fvu.detach()):.3f}", refresh=False)
            signum = stopped()
            if checkpoint is not None and (signum or time.monotonic() - last_save >= checkpoint_interval):
                state.save(Path(checkpoint), step + 1)
                last_save = time.monotonic()
            if signum:
                raise (Terminated if signum == signal.SIGTERM else KeyboardInterrupt)(f"signal {signum} at step {step + 1}")
    coder.eval()
    info = {"model": model_info(model).name, "model_fingerprint": fingerprint(model), "task": task.name,
            "config": asdict(config), "training_data": data}
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


@contextlib.contextmanager
def _deferred_signals():
    """Within the block SIGINT and SIGTERM only set a flag (a step is never cut in half); yields a function returning
    the first signal seen, or 0. Outside the main thread signals cannot be caught: it always returns 0."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return
    seen: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: seen.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: seen[0] if seen else 0
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _TrainState:
    """The resumable training state (weights, Adam moments, batch generator) as one safetensors file whose
    metadata holds the settings' hash, the next step and a hash of the tensors."""

    def __init__(self, coder: nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, settings_hash: str):
        self.coder, self.opt, self.g, self.settings_hash = coder, opt, g, settings_hash

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {f"coder.{k}": v.detach().contiguous().clone() for k, v in self.coder.state_dict().items()}
        for i, st in self.opt.state_dict()["state"].items():
            out.update({f"adam.{i}.{k}": torch.as_tensor(v).contiguous().clone() for k, v in st.items()})
        out["generator"] = self.g.get_state().clone()
        return out

    @staticmethod
    def _digest(tensors: dict[str, torch.Tensor]) -> str:
        h = hashlib.sha256()
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].numpy().tobytes())
        return h.hexdigest()

    def save(self, path: Path, next_step: int) -> None:
        from safetensors.torch import save

        from acdc_lite.runs import write_atomic

        tensors = self._tensors()
        meta = {"format": CHECKPOINT_FORMAT, "settings_hash": self.settings_hash, "next_step": str(next_step),
                "content_hash": self._digest(tensors)}
        write_atomic(path, save(tensors, metadata=meta))
        log.info("training checkpoint saved to %s at step %d", path, next_step)

    def load(self, path: Path) -> int:
        from safetensors import safe_open

        from acdc_lite.boundary import InputError, UsageError

        fix = f"delete {path} and start again (without --resume)"
        if not path.is_file():
            raise UsageError(f"nothing to resume: no {path} (a finished run removes it); run without --resume")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise InputError(f"training checkpoint {path} cannot be read ({type(e).__name__}: {e}); {fix}") from None
        if meta.get("format") != CHECKPOINT_FORMAT or meta.get("content_hash") != self._digest(tensors):
            raise InputError(f"training checkpoint {path}: not a checkpoint of this version, or edited or corrupt; {fix}")
        if meta.get("settings_hash") != self.settings_hash:
            raise UsageError(f"training checkpoint {path} was made with other settings, model weights or prompts; resume "
                             "with the same options, or use another --out")
        self.coder.load_state_dict({k[len("coder."):]: v for k, v in tensors.items() if k.startswith("coder.")})
        opt_state = self.opt.state_dict()
        moments: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("adam."):
                _, i, name = k.split(".", 2)
                moments.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": moments, "param_groups": opt_state["param_groups"]})
        self.g.set_state(tensors["generator"])
        return int(meta["next_step"])


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
