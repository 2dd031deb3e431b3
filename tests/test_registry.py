"""Registries (acdc_lite.registry): names, duplicates, plugins that run once, sources claiming names."""

import pytest
import torch

from acdc_lite import registry
from acdc_lite.models import ModelLoadError, load_model
from acdc_lite.task import Task, TaskError, load_task
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig


def test_registry_names_duplicates_and_unknown():
    reg = registry.Registry("widget")
    a, b = object(), object()
    assert reg.register("a", a) is a
    reg.register("a", a)  # the same object again is harmless
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", b)
    reg.register("a", b, replace=True)
    assert reg["a"] is b and reg.get("zz") is None and "a" in reg and reg.names() == ["a"]
    with pytest.raises(KeyError, match="unknown widget 'zz'; registered: a"):
        reg["zz"]


def test_plugins_run_once_on_first_lookup():
    reg = registry.Registry("thing")
    calls = []

    def plugin():
        calls.append(1)
        reg.register("late", 42)

    reg.add_plugin(plugin)
    reg.add_plugin(plugin)  # added once
    assert calls == []  # adding runs nothing
    assert reg.get("late") == 42 and "late" in reg and reg.names() == ["late"]
    assert calls == [1]


def _toy(name):
    torch.manual_seed(0)
    return SmallTransformer(SmallTransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=5, n_ctx=4, name=name))


def test_a_registered_source_serves_load_model_and_load_task(monkeypatch):
    """A user's own family of names reaches load_model and load_task without either knowing the module."""
    monkeypatch.setattr(registry, "MODEL_SOURCES", registry.Registry("model source"))
    monkeypatch.setattr(registry, "TASK_SOURCES", registry.Registry("task source"))
    import acdc_lite.models as models

    monkeypatch.setattr(models, "MODEL_SOURCES", registry.MODEL_SOURCES)
    members = {"toy-a", "toy-b"}

    def load(name):
        if name not in members:
            raise KeyError(f"unknown toy {name!r}; toys are {', '.join(sorted(members))}")
        return _toy(name)

    def build(name, model, n_examples, seed, metric):
        if name not in members:
            raise KeyError(f"no toy task {name!r}")
        clean = torch.tensor([[0, 1, 2, 3]] * n_examples)
        corrupt = torch.tensor([[4, 3, 2, 1]] * n_examples)
        return Task(name, clean, corrupt, torch.zeros(n_examples, 1, dtype=torch.long), torch.ones(n_examples, 1, dtype=torch.long))

    claims = lambda n: n.startswith("toy-")  # noqa: E731
    registry.MODEL_SOURCES.register("toy", registry.ModelSource("toy", claims, load, lambda: sorted(members)))
    registry.TASK_SOURCES.register("toy", registry.TaskSource("toy", claims, build, lambda: sorted(members)))
    model = load_model("toy-a")
    assert isinstance(model, SmallTransformer) and model.cfg.name == "toy-a" and not model.training
    with pytest.raises(ModelLoadError, match="cannot load 'toy-c': unknown toy 'toy-c'; toys are toy-a, toy-b"):
        load_model("toy-c")
    task = load_task("toy-b", model, n_examples=3, check=False)
    assert task.name == "toy-b" and len(task) == 3
    with pytest.raises(TaskError, match="cannot build task 'toy-z': no toy task 'toy-z'"):
        load_task("toy-z", model, check=False)
    assert registry.claiming(registry.MODEL_SOURCES, "other") is None
