"""Models placed by accelerate (some layers on disk) compute, hook and find circuits exactly as in memory."""

import pytest
import torch

from acdc_lite import ModelLoadError, hooks, load_model
from acdc_lite.models import fingerprint, model_info
from acdc_lite.offload import offloaded_modules
from acdc_lite.search import discover
from acdc_lite.task import load_task

pytest.importorskip("accelerate")

# the last layer on disk (read in place from the zoo's safetensors), everything else in memory
LAST_ON_DISK = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def pair():
    name = "induction-llama-2l"
    return load_model(name), load_model(name, device_map=LAST_ON_DISK)


def _on_disk(model) -> set[str]:
    return {k for k, v in model.original_model.hf_device_map.items() if v == "disk"}


def test_offloaded_layer_is_on_disk_and_has_the_same_weights(pair):
    memory, disk = pair
    assert _on_disk(disk) == {"model.layers.1"}
    offloaded = offloaded_modules(disk)
    assert offloaded and all(".1." in name or name.startswith("blocks.1") for name in offloaded)
    assert offloaded_modules(memory) == []
    assert any(p.is_meta for p in disk.parameters())  # the weights really are not in memory
    assert fingerprint(disk) == fingerprint(memory)


def test_offloaded_logits_and_per_head_hooks_match(pair):
    memory, disk = pair
    info = model_info(memory)
    tokens = torch.randint(0, info.d_vocab, (3, 20), generator=torch.Generator().manual_seed(3))
    names = [hooks.head_result(1), hooks.head_input(1, "q"), hooks.head_input(1, "v"), hooks.mlp_in(1)]
    with torch.no_grad():
        la, ca = memory.run_with_cache(tokens, names_filter=lambda n: n in names)
        lb, cb = disk.run_with_cache(tokens, names_filter=lambda n: n in names)
    assert torch.equal(la, lb)
    for n in names:
        assert ca[n].shape == cb[n].shape and torch.equal(ca[n], cb[n]), n
    assert ca[hooks.head_result(1)].shape[2] == info.n_heads


@pytest.mark.parametrize("method", ["eap", "acdc"])
def test_offloaded_model_finds_the_same_circuit_and_scores(pair, method):
    memory, disk = pair
    task = load_task("induction", memory, n_examples=12, seed=1)
    # twin=False: the passes run on the in-memory bridge itself (an offloaded model gets no native twin; the twin's
    # scores agree within float rounding only, see test_twin)
    a = discover(memory, task, method, progress=False, seed=1, twin=False)
    b = discover(disk, task, method, progress=False, seed=1)
    assert b.provenance["executor"] == "model"
    assert len(a.edges) > 0
    assert a.edges == b.edges
    assert a.scores == b.scores
    assert a.metrics == b.metrics
    assert a.model == b.model  # fingerprint included


def test_auto_map_with_a_small_memory_budget_sends_layers_to_disk():
    model = load_model("induction-llama-gqa-2l", device_map="auto", max_memory={"cpu": 150_000})
    assert _on_disk(model), model.original_model.hf_device_map
    reference = load_model("induction-llama-gqa-2l")
    task = load_task("induction", reference, n_examples=8)
    with torch.no_grad():
        assert torch.equal(model(task.clean), reference(task.clean))
    a, b = (discover(m, task, "eap", progress=False, twin=False) for m in (reference, model))  # both on the bridge
    assert a.edges == b.edges and a.scores == b.scores


@pytest.mark.parametrize("kwargs, words", [
    ({"device_map": "auto"}, "SmallTransformer"),  # induction-attn-2l is not a Hugging Face checkpoint
    ({"max_memory": {"cpu": "1GB"}}, "only apply with a device_map"),
    ({"offload_folder": "x"}, "only apply with a device_map"),
])
def test_placement_refused_where_it_cannot_apply(kwargs, words):
    with pytest.raises(ModelLoadError, match=words):
        load_model("induction-attn-2l", **kwargs)


def test_placement_refuses_processing_and_device():
    with pytest.raises(ModelLoadError, match="processing='none'"):
        load_model("induction-llama-2l", device_map=LAST_ON_DISK, processing="fold-ln")
    with pytest.raises(ModelLoadError, match="give one"):
        load_model("induction-llama-2l", device_map="auto", device="cpu")


def test_offloaded_joint_qkv_is_refused_with_a_reason():
    gpt2_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu", "transformer.h.0": "cpu",
                "transformer.h.1": "disk", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    with pytest.raises(ModelLoadError, match="joint q/k/v"):
        load_model("induction-gpt2-2l", device_map=gpt2_map)


def test_a_budget_too_small_for_the_embeddings_is_refused():
    with pytest.raises(ModelLoadError, match="no room for the input embeddings"):
        load_model("induction-llama-2l", device_map="auto", max_memory={"cpu": 1000})


def test_cli_discover_with_a_layer_on_disk_writes_the_same_circuit(tmp_path):
    import json

    from typer.testing import CliRunner

    from acdc_lite.cli import app

    common = ["discover", "--model", "induction-llama-2l", "--method", "eap", "--n-examples", "8", "--quiet"]
    runner = CliRunner()
    a = runner.invoke(app, [*common, "--out", str(tmp_path / "memory")])
    b = runner.invoke(app, [*common, "--out", str(tmp_path / "disk"), "--device-map", json.dumps(LAST_ON_DISK)])
    assert a.exit_code == 0 and b.exit_code == 0, (a.output, b.output)
    # in memory the passes run on the native twin (acdc_lite.twin), offloaded on the bridge: the same circuit, scores
    # within float rounding, and the executor recorded
    memory, disk = (json.loads((tmp_path / f"{where}/circuit.json").read_text()) for where in ("memory", "disk"))
    assert memory["provenance"].pop("executor") == "native-twin" and disk["provenance"].pop("executor") == "model"
    for key in ("edges", "scores", "metrics"):
        assert memory.pop(key) == pytest.approx(disk.pop(key), abs=1e-5)
    assert memory == disk
    assert json.loads((tmp_path / "disk/config.json").read_text())["device_map"] == json.dumps(LAST_ON_DISK)


@pytest.mark.parametrize("args, words", [
    (["--device-map", "everywhere"], "--device-map 'everywhere': use one of auto"),
    (["--device-map", "{not json"], "--device-map is not a JSON object"),
    (["--offload-folder", "x"], "--offload-folder only applies with --device-map"),
    (["--device-map", "auto", "--max-memory", "lots"], "--max-memory 'lots' is not a size"),
    (["--device-map", "auto", "--device", "cpu"], "give one"),
])
def test_cli_placement_options_refused_with_one_line(tmp_path, args, words):
    from typer.testing import CliRunner

    from acdc_lite.cli import app

    res = CliRunner().invoke(app, ["discover", "--model", "induction-llama-2l", "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert words in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_the_memory_plan_counts_the_offloaded_weights(pair):
    from acdc_lite import memory

    in_memory, disk = pair
    layer1 = sum(t.numel() * t.element_size() for n, t in in_memory.state_dict().items() if n.startswith("blocks.1."))
    assert memory.offloaded_bytes(in_memory) == 0
    assert memory.offloaded_bytes(disk) == layer1
    shape = memory.model_shape(disk)
    assert shape == memory.model_shape(in_memory)
    plain = memory.estimate(shape, "eap", 8, 10, 8)
    placed = memory.estimate(shape, "eap", 8, 10, 8, offloaded=layer1)
    # a gradient pass keeps every offloaded weight it read until the backward pass
    assert placed.phases["gradient pass"]["offloaded weights read"] == layer1
    assert placed.peak == plain.peak + layer1
