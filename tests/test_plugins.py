"""--plugin: a researcher's module outside the repository (written into a temporary folder here) registers a
sampling policy, a run input with its provider and a projector; train.py takes them as it takes the built-in
ones, from the command line, a --config file and a resumed run's saved arguments."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from common import cli
from common.assets import asset_path
from common.errors import Stopped
from common.plugins import PluginError, import_plugin
from model import Transformer, get_config, save_model
from model.families import FAMILIES
from optim.projector import PROJECTORS
from sampling.policies import POLICIES
from helpers import interrupt_after, run
from training.args import build_parser
from training.checkpoint import checkpoints, read_optimizer
from training.export import main as export_main
from training.inputs import INPUT_PROVIDERS

PLUGIN = '''
"""A researcher's own policies and run input."""
import numpy as np

from sampling.policies import register_policy
from training.inputs import register_input


@register_policy("middle_first")
def middle_first(n_layers: int) -> np.ndarray:
    """Favour the middle blocks."""
    centre = (n_layers - 1) / 2
    return 1.0 + centre - np.abs(np.arange(n_layers) - centre)


@register_input("depth")
def depth(c) -> list[int]:
    """Blocks between each block and the output."""
    n = c.model.config.n_layers
    return [n - 1 - i for i in range(n)]


@register_policy("shallow_output")
def shallow_output(depth: list[int]) -> np.ndarray:
    """Only the blocks at most one block from the output."""
    return (np.asarray(depth) <= 1).astype(float)


@register_policy("needs_nothing_provided")
def needs_nothing_provided(width: list[int]) -> np.ndarray:
    return np.asarray(width, dtype=float)

'''
# The toy projector of docs/design.md, as a second plugin file (registered under another name than the tests' own)
SKETCH = (Path(__file__).parent / "sketch_projector.py").read_text().replace('("sketch")', '("plugin_sketch")')
FAMILY = """from model.families.family import Family, register_family
from model.families.llama import NAMES

register_family(Family("plugin_llama", "plugin_llama", "PluginLlamaForCausalLM", "plugin_llama", "llama2", NAMES))
"""
REGISTERED = {"policies": ("middle_first", "shallow_output", "needs_nothing_provided"), "inputs": ("depth",),
              "projectors": ("plugin_sketch",)}


def forget_plugin() -> None:
    """As a new process would be: the module not imported, nothing of it registered."""
    sys.modules.pop("my_research", None)
    sys.modules.pop("my_sketch", None)
    sys.modules.pop("my_family", None)
    FAMILIES.pop("plugin_llama", None)
    for name in REGISTERED["policies"]:
        POLICIES.pop(name, None)
    for name in REGISTERED["inputs"]:
        INPUT_PROVIDERS.pop(name, None)
    for name in REGISTERED["projectors"]:
        PROJECTORS.pop(name, None)


@pytest.fixture
def plugin(tmp_path_factory, monkeypatch):
    """The plugin's path, in a folder of its own outside the repository; forgotten before and after."""
    folder = tmp_path_factory.mktemp("research")
    path = folder / "my_research.py"
    path.write_text(PLUGIN)
    (folder / "my_sketch.py").write_text(SKETCH)
    (folder / "my_family.py").write_text(FAMILY)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (a plugin named by module may add the current folder)
    forget_plugin()
    yield path
    forget_plugin()


def trainer_state(out):
    return torch.load(checkpoints(out)[-1] / "trainer.pt", weights_only=True)


@pytest.mark.slow  # train.py runs
def test_a_policy_of_a_plugin_file_is_a_sampling_choice_and_trains(tiny_dir, data_file, tmp_path, plugin):
    assert "middle_first" not in build_parser()._option_string_actions["--sampling"].choices
    metrics = run(tiny_dir, data_file, tmp_path, "--plugin", str(plugin), "--method", "owlore",
                  "--sampling", "middle_first", "--max-steps", "2", "--gamma", "2", "--period", "1")
    assert "middle_first" in build_parser()._option_string_actions["--sampling"].choices
    assert len(metrics) == 2 and all(len(m["active_blocks"]) == 2 for m in metrics)
    sampler = trainer_state(tmp_path)["sampler"]
    assert sampler["policy"] == "middle_first" and sampler["inputs"] == {}
    assert not (tmp_path / "outlier_scores.json").exists()  # the policy needs no ratios: none were computed


@pytest.mark.slow  # train.py runs
def test_a_policy_gets_a_run_input_of_the_plugin_and_a_resume_imports_the_plugin_again(
        tiny_dir, data_file, tmp_path, plugin, monkeypatch):
    interrupt_after(2, monkeypatch)
    with pytest.raises(Stopped):  # (after saving step 2)
        run(tiny_dir, data_file, tmp_path, "--plugin", str(plugin), "--method", "owlore", "--sampling",
            "shallow_output", "--max-steps", "4", "--gamma", "2", "--period", "1", "--save-every", "0")
    monkeypatch.undo()
    assert trainer_state(tmp_path)["sampler"]["inputs"] == {"depth": [3, 2, 1, 0]}  # from the plugin's provider
    assert trainer_state(tmp_path)["step"] == 2
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["plugin"] == [str(plugin)]
    forget_plugin()
    train.main(["--resume", str(tmp_path)])  # the saved arguments name the plugin: imported before the parser
    assert "my_research" in sys.modules and "shallow_output" in POLICIES
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4] and all(m["active_blocks"] == [2, 3] for m in metrics)
    assert trainer_state(tmp_path)["step"] == 4


@pytest.mark.slow  # train.py runs
def test_a_plugin_in_a_config_file_by_module_name_from_the_current_folder(tiny_dir, data_file, tmp_path, plugin,
                                                                         monkeypatch):
    monkeypatch.chdir(plugin.parent)
    config = tmp_path / "run.yaml"
    config.write_text("plugin: [my_research]\nsampling: middle_first\nmethod: lisa\n")
    metrics = run(tiny_dir, data_file, tmp_path / "out", "--config", str(config), "--max-steps", "1")
    assert len(metrics) == 1 and trainer_state(tmp_path / "out")["sampler"]["policy"] == "middle_first"
    assert trainer_state(tmp_path / "out")["args"]["plugin"] == ["my_research"]


@pytest.mark.slow  # train.py runs
def test_a_projector_of_a_plugin_is_a_projector_choice_and_trains(tiny_dir, data_file, tmp_path, plugin):
    assert "plugin_sketch" not in build_parser()._option_string_actions["--projector"].choices
    sketch = plugin.parent / "my_sketch.py"
    metrics = run(tiny_dir, data_file, tmp_path, "--plugin", str(plugin), "--plugin", str(sketch), "--method", "galore",
                  "--projector", "plugin_sketch", "--max-steps", "2")
    assert len(metrics) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    _, groups = read_optimizer(checkpoints(tmp_path)[-1])
    assert {g["projector"]["name"] for g in groups if g["projector"]} == {"plugin_sketch"}


def one_line(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        cli.run(train.main, argv)
    line = err.value.code
    assert isinstance(line, str) and line.startswith("error: ") and "\n" not in line, line
    return line


def test_a_missing_plugin_or_an_input_nothing_provides_is_one_line(tiny_dir, data_file, tmp_path, plugin):
    base = ["--model", str(tiny_dir), "--data", str(data_file), "--out", str(tmp_path / "out"), "--gamma", "2"]
    line = one_line([*base, "--plugin", "no_such_research_module"])
    assert line.startswith("error: --plugin no_such_research_module: no module named 'no_such_research_module'")
    missing = tmp_path / "nowhere.py"
    assert one_line([*base, "--plugin", str(missing)]) == f"error: --plugin {missing}: no such file"
    (tmp_path / "bad.yaml").write_text("plugin: {a: 1}\n")
    assert "bad.yaml: plugin: expected a module name or a list of them" in one_line([*base, "--config", str(tmp_path / "bad.yaml")])
    line = one_line([*base, "--plugin", str(plugin), "--sampling", "needs_nothing_provided"])
    assert line.startswith("error: --sampling needs_nothing_provided: needs the run input width, which nothing provides")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_an_exception_in_the_plugins_own_code_keeps_its_traceback(tmp_path):
    broken = tmp_path / "broken_research.py"
    broken.write_text("from sampling.policies import register_policy\n\nregister_policy('uniform')(lambda n_layers: 1)\n")
    with pytest.raises(PluginError) as err:  # not a user error: cli.run lets it through, traceback and all
        cli.run(train.main, ["--plugin", str(broken)])
    assert isinstance(err.value.__cause__, ValueError) and "already registered" in str(err.value.__cause__)
    assert "broken_research" not in sys.modules


@pytest.mark.slow  # train.py runs
def test_a_family_of_a_plugin_trains_and_its_checkpoint_exports_with_the_plugin_imported_again(data_file, tmp_path,
                                                                                            plugin):
    family = plugin.parent / "my_family.py"
    import_plugin(str(family))  # to write the base model of the family
    torch.manual_seed(0)
    config = get_config("tiny", n_layers=4, vocab_size=32000, max_seq_len=256, family="plugin_llama")
    save_model(Transformer(config), tmp_path / "base", format="meta", tokenizer=asset_path("mistral-v1-tokenizer"))
    assert json.loads((tmp_path / "base" / "params.json").read_text())["family"] == "plugin_llama"
    forget_plugin()
    run(tmp_path / "base", data_file, tmp_path / "run", "--plugin", str(family), "--method", "lisa", "--max-steps", "1")
    forget_plugin()
    export_main([str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf")])  # the run's plugin again
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["model_type"], config["architectures"]) == ("plugin_llama", ["PluginLlamaForCausalLM"])


def test_eval_and_sampling_load_a_model_of_a_plugin_family_given_by_plugin(tmp_path, plugin):
    family = plugin.parent / "my_family.py"
    import_plugin(str(family))
    torch.manual_seed(0)
    config = get_config("tiny", n_layers=2, vocab_size=32000, max_seq_len=64, family="plugin_llama")
    save_model(Transformer(config), tmp_path / "m", format="hf", tokenizer=asset_path("mistral-v1-tokenizer"))
    forget_plugin()
    calib = tmp_path / "calib.txt"
    calib.write_text("Plain calibration text for the plugin family. " * 40)
    from eval.__main__ import main as eval_main
    from sampling.__main__ import main as sampling_main
    with pytest.raises(SystemExit, match="plugin_llama"):  # without the plugin the family is unknown: one line
        eval_main(["--model", str(tmp_path / "m"), "--tasks", "boolq", "--limit", "1", "--device", "cpu"])
    eval_main(["--plugin", str(family), "--model", str(tmp_path / "m"), "--tasks", "boolq", "--limit", "2",
               "--dtype", "float32", "--device", "cpu", "--output", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["config"]["n_examples"] == 2
    forget_plugin()
    cli.run(sampling_main, ["--plugin", str(family), "--model", str(tmp_path / "m"), "--calib", str(calib),
                            "--n-windows", "2", "--seq-len", "16", "--gamma", "1", "--M", "2", "--dtype", "float32",
                            "--out", str(tmp_path / "s.json")])
    assert len(json.loads((tmp_path / "s.json").read_text())["ratios"]) == 2
