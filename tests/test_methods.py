"""The method registry: options defined once, needs declared and true, settings decided once and read back."""

import inspect
import json
from dataclasses import fields, replace

import pytest
import torch
from typer.testing import CliRunner

from acdc_lite import Task, discover, search
from acdc_lite.cli import app
from acdc_lite.faithfulness import faithfulness, gap_is_zero
from acdc_lite.pipeline import DiscoverConfig
from acdc_lite.search import CHECKPOINTED, METHODS, SearchError, Settings, settings_of
from acdc_lite.search.methods import all_options, options_for
from acdc_lite.search.spec import Level, MethodSpec
from acdc_lite.validate import validate


@pytest.fixture(scope="module")
def toy_task():
    g = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(0, 20, (12, 6), generator=g), torch.randint(0, 20, (12, 6), generator=g)
    return Task("toy", clean, corrupt, torch.randint(0, 20, (12, 1), generator=g), torch.randint(0, 20, (12, 1), generator=g))


def _unused(spec: MethodSpec) -> str:
    return next(name for name in all_options() if name not in spec.option_names())


def _other_value(spec: MethodSpec, name: str):
    """A valid non-default value of option `name` (from its type and range)."""
    hint = {f.name: f for f in fields(spec.options)}[name]
    kind = str(hint.type)
    if "Literal" in kind:
        return "node"
    if "bool" in kind:
        return True
    if "int" in kind:
        return 3
    return 0.25


@pytest.mark.parametrize("method", METHODS)
def test_every_method_refuses_an_option_it_does_not_use(small_model, toy_task, method):
    spec = METHODS[method]
    name = _unused(spec)
    value = _other_value(next(s for s in METHODS.values() if name in s.option_names()), name)
    with pytest.raises(SearchError, match=f"^{method} does not use {name}; it is an option of "):
        search(small_model, toy_task, method, progress=False, **{name: value})
    with pytest.raises(SearchError, match=f"{method} does not use {name}"):
        DiscoverConfig.parse({"method": method, "options": {name: value}}, "config file x.json")
    with pytest.raises(SearchError, match="no method has it"):
        options_for(method, {"not_an_option": 1})


@pytest.mark.parametrize("method", METHODS)
def test_options_round_trip_through_config_json(method):
    spec = METHODS[method]
    opts = spec.options(**{name: _other_value(spec, name) for name in spec.option_names()
                           if name not in ("threshold", "target_faithfulness")})  # top_n alone picks the circuit
    assert opts != spec.defaults() or not spec.option_names()
    config = DiscoverConfig(method=method, options=opts, seed=3)
    text = json.dumps(config.to_dict())
    assert DiscoverConfig.parse(json.loads(text), "config.json") == config
    flat = {k: v for k, v in json.loads(text).items() if k != "options"} | json.loads(text)["options"]
    assert DiscoverConfig.parse(flat, "config.json") == config  # the same keys at the top level


def test_cli_refuses_an_unused_option_with_exit_code_2(tmp_path):
    res = CliRunner().invoke(app, ["discover", "--method", "acdc", "--top-n", "5", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "acdc does not use --top-n; it is an option of eap, eap-ig, exact" in res.output
    assert not (tmp_path / "o").exists()
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"method": "hybrid", "options": {"include_mlps": True}}))
    res = CliRunner().invoke(app, ["discover", "--config", str(config), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "hybrid does not use include_mlps" in res.output


def test_cli_has_one_option_per_registry_option():
    res = CliRunner().invoke(app, ["discover", "--help"], terminal_width=200)
    for name, entry in all_options().items():
        assert f"--{name.replace('_', '-')}" in res.output, name
        assert entry["methods"]


@pytest.mark.parametrize("method", METHODS)
def test_declared_gradient_need_matches_behaviour(small_model, toy_task, method):
    spec = METHODS[method]
    if spec.gradient:
        with pytest.raises(SearchError, match="zero gradient"):
            search(small_model, toy_task, method, metric="kl", progress=False)
    else:
        res = search(small_model, toy_task, method, metric="kl", progress=False)
        assert res.settings.metric == "kl" and res.metric_full == pytest.approx(0.0, abs=1e-6)  # -KL of the clean model


@pytest.mark.parametrize("method", METHODS)
def test_settings_are_resolved_once_and_read_back_from_the_circuit(small_model, toy_task, method):
    spec = METHODS[method]
    circuit = discover(small_model, toy_task, method, progress=False)
    s = settings_of(circuit)
    assert isinstance(s, Settings) and s.method == method and s.ablation == "resample"
    assert s.metric == (spec.default_metric or toy_task.default_metric) == circuit.method["metric"]
    if "tau" in spec.option_names():  # auto tau: a number, decided from m(full) and m(empty)
        full, empty = circuit.metrics["metric_full"], circuit.metrics["metric_empty"]
        expected = 0.01 if s.metric == "kl" else spec.tau_share * abs(full - empty)
        assert s.tau == pytest.approx(expected, rel=1e-6) and s.tau_rule != "given"
    if "target_faithfulness" in spec.option_names():
        assert s.options.target_faithfulness == 0.9 and s.options.top_n is None
    again = search(small_model, toy_task, method, s.options, metric=s.metric, progress=False)
    assert again.settings == replace(s, tau_rule="given" if s.tau_rule else None)  # the recorded options reproduce
    assert set(circuit.edges) == {str(e) for e in _edges(small_model, again.kept)}


def _edges(model, kept):
    from acdc_lite import ModelGraph

    return ModelGraph.from_model(model).edges_from_mask(kept)


@pytest.mark.parametrize("method", ["acdc", "eap", "head-pruning"])
def test_discover_and_validate_agree_on_faithfulness_and_metric(small_model, toy_task, method):
    circuit = discover(small_model, toy_task, method, progress=False)
    report = validate(small_model, toy_task, circuit, check_minimality=False, curve=False, random_seeds=0, progress=False)
    assert report.metric == circuit.method["metric"]  # acdc: KL, the others: the task's metric
    assert report.faithfulness == pytest.approx(circuit.metrics["faithfulness"], abs=1e-5)
    assert report.metric_full == pytest.approx(circuit.metrics["metric_full"], abs=1e-6)


def test_bookkeeping_is_counted_apart_from_the_search(small_model, toy_task):
    eap = search(small_model, toy_task, "eap", progress=False)  # selection by target faithfulness: sketch + confirmation
    assert eap.search_forward_passes == pytest.approx(1.0) and eap.backward_passes == pytest.approx(1.0)
    # m(full) from the gradient pass, m(empty) from the corrupted cache pass; the selection measures its circuit
    assert eap.bookkeeping["reference"] == 0 and "final evaluation" not in eap.bookkeeping
    assert eap.bookkeeping["selection"] >= 1
    assert eap.forward_passes == pytest.approx(eap.search_forward_passes + eap.bookkeeping_forward_passes)
    acdc = search(small_model, toy_task, "acdc", progress=False)
    assert set(acdc.bookkeeping) == {"reference", "final evaluation"}  # the auto tau read the reference values
    # m(full) and the circuit: one pass each; m(empty) under resample ablation is the corrupted cache pass's metric
    assert acdc.bookkeeping == {"reference": 1, "final evaluation": 1}
    assert acdc.search_forward_passes == pytest.approx(acdc.forward_passes - 2)


def test_checkpointable_is_declared_truly(small_model, toy_task, tmp_path):
    for method, spec in METHODS.items():
        assert (method in CHECKPOINTED) == spec.checkpointable
        if not spec.checkpointable:
            with pytest.raises(SearchError, match="does not checkpoint"):
                search(small_model, toy_task, method, checkpoint=tmp_path / f"{method}.json", progress=False)


@pytest.mark.parametrize("method", [m for m, s in METHODS.items() if s.level is Level.NODE])
def test_node_methods_score_whole_nodes(small_model, toy_task, method):
    res = search(small_model, toy_task, method, progress=False)
    for row in res.scores:
        finite = row[torch.isfinite(row)]
        assert len(finite) == 0 or bool((finite == finite[0]).all())


def test_discover_takes_exactly_the_registry_options_as_keywords():
    params = inspect.signature(discover).parameters
    explicit = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {
        "options", "metric", "ablation", "seed", "batch_size", "checkpoint", "progress", "twin"}
    assert explicit == set(all_options())
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in explicit | {"metric", "ablation", "seed", "batch_size", "checkpoint", "progress", "twin"}:
        assert f"{name}" in discover.__doc__, name


def test_a_new_method_is_one_module_and_one_registry_entry(small_model, toy_task, monkeypatch):
    """A method registered from outside runs through search, discover and the config file with no other change."""
    from dataclasses import dataclass, field

    from acdc_lite.search.common import SearchResult

    @dataclass(frozen=True)
    class KeepInputOptions:
        keep_logits: bool = field(default=True, metadata={"help": "keep input->logits"})

    def run(ctx, options, runtime):
        kept = ctx.graph.empty_mask()
        kept[0, ctx.graph.logits_receiver] = options.keep_logits
        return SearchResult("keep-input", {}, kept, torch.full(kept.shape, float("nan")), [], 0.0, 0.0, 0.0,
                            ctx.metric_full, ctx.metric_empty, ctx.final(kept))

    spec = MethodSpec("keep-input", "keeps input->logits", KeepInputOptions, run)
    monkeypatch.setitem(METHODS, "keep-input", spec)
    circuit = discover(small_model, toy_task, "keep-input", options={"keep_logits": True}, progress=False)
    assert list(circuit.edges) == ["input->logits"] and circuit.method["params"] == {"keep_logits": True}
    assert DiscoverConfig.parse({"method": "keep-input", "keep_logits": False}, "x").options == KeepInputOptions(False)
    with pytest.raises(SearchError, match="keep-input does not use tau"):
        search(small_model, toy_task, "keep-input", tau=0.1, progress=False)


def test_one_faithfulness_and_one_tolerance():
    assert faithfulness(0.75, 1.0, 0.5) == 0.5 and faithfulness(2.0, 2.0, 1.0) == 1.0
    assert faithfulness(0.3, 1.0, 1.0 + 1e-12) != faithfulness(0.3, 1.0, 1.0 + 1e-12)  # NaN: no gap
    assert gap_is_zero(1e6, 1e6 * (1 + 1e-12)) and not gap_is_zero(1e-3, 0.0)
    values = faithfulness(torch.tensor([0.5, 1.0]), 1.0, 0.0)
    assert torch.equal(values, torch.tensor([0.5, 1.0]))


def test_search_error_names_unknown_methods_and_conflicting_selection(small_model, toy_task):
    with pytest.raises(SearchError, match="unknown method 'magic'; choose one of acdc, "):
        search(small_model, toy_task, "magic", progress=False)
    with pytest.raises(SearchError, match="give one of top_n, threshold, target_faithfulness"):
        search(small_model, toy_task, "eap", top_n=3, threshold=0.1, progress=False)
    with pytest.raises(SearchError, match="options object or as keywords, not both"):
        search(small_model, toy_task, "eap", {"top_n": 3}, top_n=4, progress=False)


def test_a_method_declaring_no_gqa_support_is_refused_on_a_gqa_model(monkeypatch):
    from acdc_lite import load_model
    from tests.conftest import BUILDERS

    torch.manual_seed(0)
    gqa = load_model(BUILDERS["llama-gqa"]())
    g = torch.Generator().manual_seed(2)
    task = Task("toy", torch.randint(1, 20, (4, 5), generator=g), torch.randint(1, 20, (4, 5), generator=g),
                torch.randint(1, 20, (4, 1), generator=g), torch.randint(1, 20, (4, 1), generator=g))
    monkeypatch.setitem(METHODS, "eap", replace(METHODS["eap"], gqa=False))
    with pytest.raises(SearchError, match="eap does not support grouped-query attention"):
        search(gqa, task, "eap", progress=False)
    assert search(gqa, task, "eap-ig", top_n=5, progress=False).n_edges > 0  # declared True: runs
