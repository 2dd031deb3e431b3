'''Docstring (Heimersheim & Janiak 2023): complete the next argument name in a Python docstring.

    def port(self, load, size, files, last):
        """oil column piece

        :param load: crime population
        :param size: unit dark
        :param                                  -> " files"

The definition has four arguments after `self`; the docstring documents the first two and the
answer is the third. The corrupted prompt renames the four arguments in the definition (four other
names, none of them in the clean prompt) and keeps the docstring, so the definition no longer says
which name comes next.

Metric (our choice): logit difference between the answer and the most distracting wrong name,
`logit_diff_max`: the answer's logit minus the highest logit, in the same forward pass, among the
other names of the clean definition (the two documented ones and the fourth) and the four names of
the corrupted definition (the foil set). Taking the maximum at run time means the metric is positive
only when the answer beats every wrong name the prompt offers; the corrupted counterpart of the
answer, the name a model reading the corrupted definition would copy, is one of them. The plain
`logit_diff` (answer minus the mean over the foil set) is available as well.

Works with GPT-2-style BPE tokenizers, in which the names and words below are single tokens after a
space, and with word-level vocabularies that contain the fixed words (`def ( self , ) : """ :param`)
and enough names and words; there the prompt is written with spaces between all tokens. Anything
else raises TaskError saying what is missing.
'''

from __future__ import annotations

import logging
import random

import torch
from torch import nn

from acdc_lite.task import Task, TaskError, draw_rows, text_vocabulary

log = logging.getLogger(__name__)

DESCRIPTION = "Docstring: next ':param' name in a Python docstring; def arguments renamed; logit diff vs the top wrong name"

ARGS = ["load", "size", "files", "last", "name", "data", "value", "key", "path", "mode", "count", "index", "text",
        "line", "node", "item", "user", "token", "result", "state", "start", "end", "step", "limit", "target",
        "source", "level", "color", "width", "height", "host", "query", "block", "shape", "order", "label",
        "field", "image", "model", "file", "page", "group", "score", "match", "filter", "context", "message"]
WORDS = ["oil", "column", "piece", "crime", "population", "unit", "dark", "river", "light", "water", "green", "story",
         "money", "power", "world", "table", "glass", "stone", "paper", "music", "garden", "winter", "summer", "horse",
         "silver", "market", "voice", "sound", "forest", "night", "bread", "cloud"]
FUNCTIONS = ["port", "run", "check", "update", "build", "parse", "read", "merge", "scan", "apply", "fetch", "send"]
FIXED_WORDS = ["def", "(", "self", ",", ")", ":", '"""', ":param"]
N_ARGS, N_DOCUMENTED = 4, 2  # the answer is argument N_DOCUMENTED (0-based), the first undocumented one
MIN_ARGS, MIN_WORDS = 2 * N_ARGS, 4


def _text(fn: str, args: list[str], documented: list[str], words: list[str], word_level: bool) -> str:
    """The prompt: `args` in the definition, `documented` in the docstring, with 3 + 2 * N_DOCUMENTED description `words`."""
    if word_level:
        params = " ".join(f":param {a} : {words[3 + 2 * i]} {words[4 + 2 * i]}" for i, a in enumerate(documented))
        return f'def {fn} ( self , {" , ".join(args)} ) : """ {" ".join(words[:3])} {params} :param'
    params = "".join(f"    :param {a}: {words[3 + 2 * i]} {words[4 + 2 * i]}\n" for i, a in enumerate(documented))
    return f'def {fn}(self, {", ".join(args)}):\n    """{" ".join(words[:3])}\n\n{params}    :param'


def _logit_diff_max(task: Task, model: nn.Module | None = None):
    """Answer logit minus the highest foil logit at the answer position, per example."""
    answers, foils, pos = task.answers[:, 0], task.foils, task.answer_pos

    def metric(logits, idx):
        x = logits[torch.arange(len(idx), device=logits.device), pos.to(logits.device)[idx]]  # [b, vocab]
        f = foils.to(x.device)[idx]
        wrong = x.gather(1, f.clamp(min=0)).masked_fill(f < 0, float("-inf")).max(1).values
        return x.gather(1, answers.to(x.device)[idx].unsqueeze(1)).squeeze(1) - wrong

    return metric


def build(model: nn.Module, n_examples: int = 64, seed: int = 0) -> Task:
    """The docstring task for `model`'s tokenizer or word vocabulary (see the module docstring)."""
    vocab = text_vocabulary(model, "docstring", n_examples)
    word_level = vocab.words is not None
    if word_level:
        missing = [w for w in FIXED_WORDS if w not in vocab.words]
        if missing:
            raise TaskError(f"docstring: words missing from this model's vocabulary: {' '.join(missing)}")
    names = vocab.word_ids(ARGS)
    words = list(vocab.word_ids(WORDS))
    functions = list(vocab.word_ids(FUNCTIONS))
    for found, minimum, what, pool in ((names, MIN_ARGS, "argument names", ARGS), (words, MIN_WORDS, "description words", WORDS),
                                       (functions, 1, "function names", FUNCTIONS)):
        if len(found) < minimum:
            raise TaskError(f"docstring needs at least {minimum} {what} that are single tokens in this model's vocabulary, "
                            f"found {len(found)} ({', '.join(found) or 'none'}); add some of {', '.join(pool[:8])}, ... "
                            "(tasks/docstring.py)")
    bos = vocab.bos

    def encode(fn: str, args: list[str], desc: list[str], documented: list[str]) -> list[int]:
        return ([bos] if bos is not None else []) + vocab.encode(_text(fn, args, documented, desc, word_level))

    arg_names = list(names)
    n_desc = 3 + 2 * N_DOCUMENTED
    # the first description word follows the quotes with no space; prefer words that are one token there too
    first_words = [w for w in words if w in vocab.word_ids(WORDS, space=False)] or words
    seq_len = len(encode(functions[0], arg_names[:N_ARGS], first_words[:1] + words[:1] * (n_desc - 1), arg_names[:N_DOCUMENTED]))
    rng = random.Random(seed)

    def draw():
        picked = rng.sample(arg_names, 2 * N_ARGS)
        args, renamed = picked[:N_ARGS], picked[N_ARGS:]
        fn, desc = rng.choice(functions), [rng.choice(first_words)] + rng.choices(words, k=n_desc - 1)
        clean, corrupt = encode(fn, args, desc, args[:N_DOCUMENTED]), encode(fn, renamed, desc, args[:N_DOCUMENTED])
        answer = names[args[N_DOCUMENTED]]
        # a name merged with its neighbour under this tokenizer would change the length or hide the answer
        if len(clean) != seq_len or len(corrupt) != seq_len or clean.count(answer) != 1 or answer in corrupt:
            return None
        wrong = [names[a] for a in args if a != args[N_DOCUMENTED]] + [names[a] for a in renamed]
        return clean, corrupt, answer, wrong

    rows = draw_rows("docstring", n_examples, draw)
    return Task(
        name="docstring",
        clean=torch.tensor([r[0] for r in rows]),
        corrupt=torch.tensor([r[1] for r in rows]),
        answers=torch.tensor([[r[2]] for r in rows]),
        foils=torch.tensor([r[3] for r in rows]),
        default_metric="logit_diff_max",
        custom_metrics={"logit_diff_max": _logit_diff_max},
        info={"seed": seed, "n_args": N_ARGS, "documented": N_DOCUMENTED, "bos": bos is not None,
              "corruption": "the definition's argument names replaced by other names",
              "metric": "answer logit minus the highest logit among the other clean and the corrupted argument names"},
    )
