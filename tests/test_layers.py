"""The package's import graph: no cycle, imports only go down (acdc_lite.layers), and the checker itself."""

import subprocess
import sys

import pytest

from acdc_lite import layers


def test_package_has_no_cycle_and_no_upward_import():
    graph = layers.import_graph()
    assert graph.cycles() == []
    assert graph.upward() == []
    assert {"acdc_lite.shape", "acdc_lite.registry", "acdc_lite.cli", "acdc_lite.search.acdc"} <= set(graph.modules)
    # the layering DESIGN.md draws: the low layers never reach up
    assert "acdc_lite.models" not in graph.modules["acdc_lite.graph"]
    assert not any(m.startswith("acdc_lite.search") for m in graph.modules["acdc_lite.validate"])
    assert "acdc_lite.tracr" not in graph.modules["acdc_lite.models"] | graph.modules["acdc_lite.task"]


def _write_package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "acdc_lite"


def test_checker_finds_cycles_and_upward_imports(tmp_path):
    pkg = _write_package(tmp_path, {
        "acdc_lite/__init__.py": "",
        "acdc_lite/graph.py": "def f():\n    from acdc_lite.models import x\n",  # graph -> models, inside a function
        "acdc_lite/models.py": "from . import graph\n",  # models -> graph (relative): upward, and a cycle
        "acdc_lite/search/__init__.py": "from acdc_lite.search import common\n",  # a package importing its own child
        "acdc_lite/search/common.py": "import acdc_lite.hooks\n",
        "acdc_lite/hooks.py": "import os\n",
    })
    graph = layers.import_graph(pkg)
    assert graph.modules["acdc_lite.graph"] == {"acdc_lite.models"}
    assert graph.modules["acdc_lite.models"] == {"acdc_lite.graph"}
    assert graph.modules["acdc_lite.search"] == {"acdc_lite.search.common"}
    assert graph.modules["acdc_lite.search.common"] == {"acdc_lite.hooks"}
    assert graph.cycles() == [["acdc_lite.graph", "acdc_lite.models"]]
    assert graph.upward() == [("acdc_lite.models", "acdc_lite.graph")]
    assert "IMPORT CYCLE: acdc_lite.graph -> acdc_lite.models" in layers.report(graph)
    assert layers.main([str(pkg)]) == 1


def test_layer_of():
    assert layers.LAYER_NAMES[layers.layer_of("acdc_lite.search.hybrid")] == "search"
    assert layers.LAYER_NAMES[layers.layer_of("acdc_lite.zoo")] == "models, task"
    assert layers.LAYER_NAMES[layers.layer_of("acdc_lite.zoo.train")] == "apps"
    assert layers.LAYER_NAMES[layers.layer_of("acdc_lite.something_new")] == "apps"
    assert layers.LAYER_NAMES[layers.layer_of("acdc_lite")] == "cli"


def test_command_prints_the_graph_and_no_cycle():
    out = subprocess.run([sys.executable, "-m", "acdc_lite.layers"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1].endswith("imports only go down, no cycle")
    assert "[graph]" in out and "  acdc_lite.graph -> acdc_lite.hooks, acdc_lite.shape" in out


def test_public_names_are_all_exported():
    import acdc_lite

    assert set(acdc_lite.__all__) == {"__version__", *acdc_lite._EXPORTS}
    assert callable(acdc_lite.search) and callable(acdc_lite.validate)  # the functions, not the submodules


def test_importing_the_package_loads_no_torch():
    code = "import sys, acdc_lite; print(sorted(m for m in ('torch', 'transformer_lens', 'acdc_lite.models') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", [["--version"], ["version"], ["tasks", "list"], ["zoo", "list"], ["--help"]])
def test_commands_that_need_no_model_import_no_torch(argv):
    code = ("import sys, runpy; sys.argv = ['acdc-lite', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('acdc_lite', run_name='__main__')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("argv", [["--method", "acdcc"], ["--tau", "-1"], ["--ablation", "foo"], ["--dtype", "float8"],
                                  ["--processing", "x"], ["--top-n", "5"]])
def test_a_bad_discover_setting_is_refused_before_torch_loads(argv, tmp_path):
    code = ("import sys, runpy; sys.argv = ['acdc-lite', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('acdc_lite', run_name='__main__')\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "discover", *argv, "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-2:] == ["exit 2", "[]"]  # 2: a usage error
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_task_descriptions_read_without_import_match_the_modules():
    from acdc_lite import tasks

    assert tasks.descriptions() == {name: module.DESCRIPTION for name, module in tasks.registry().items()}
