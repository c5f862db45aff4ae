"""Named configs found in the layouts downloads really have: Meta's tree, the HF hub cache, the llama CLI."""
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.assets import asset_path, cache_dir
from model import Transformer, get_config, load_model, save_model
from model.config import CONFIGS
from model.discover import CheckpointNotFound, find_checkpoint

TOKENS = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    """No real cache of this machine is searched: HOME and every search variable point into tmp_path."""
    monkeypatch.setenv("OWLORE_CACHE", str(cache_dir()))  # the real assets stay reachable
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("OWLORE_MODELS", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)


def tiny_as(monkeypatch, name, **overrides):
    """A tiny random model registered under a real config name, so the real name table is exercised."""
    config = replace(get_config("tiny", **overrides), name=name)
    monkeypatch.setitem(CONFIGS, name, config)
    torch.manual_seed(0)
    return Transformer(config).eval()


def same_logits(a, b):
    with torch.no_grad():
        return torch.equal(a(TOKENS), b(TOKENS))


def test_meta_download_tree_tokenizer_in_the_parent(tmp_path, monkeypatch):
    model = tiny_as(monkeypatch, "llama2-7b", vocab_size=32000)
    root = tmp_path / "download"
    save_model(model, root / "llama-2-7b", format="meta")
    params = json.loads((root / "llama-2-7b" / "params.json").read_text())
    (root / "llama-2-7b" / "params.json").write_text(json.dumps({**params, "vocab_size": -1}))  # as Meta ships it
    (root / "tokenizer.model").write_bytes(asset_path("mistral-v1-tokenizer").read_bytes())
    (root / "tokenizer_checklist.chk").write_text("")
    loaded, tokenizer = load_model("llama2-7b", ckpt_dir=root)
    assert tokenizer is not None and tokenizer.vocab_size == loaded.config.vocab_size == 32000
    assert same_logits(loaded, model)
    loaded, tokenizer = load_model(root / "llama-2-7b")  # the folder itself works too
    assert tokenizer is not None and same_logits(loaded, model)


def test_hf_hub_cache_snapshot_tree(tmp_path, monkeypatch):
    model = tiny_as(monkeypatch, "llama2-7b")
    staged = tmp_path / "staged"
    save_model(model, staged, format="hf")
    repo = tmp_path / "hub" / "models--meta-llama--Llama-2-7b-hf"
    snapshot = repo / "snapshots" / "01c7f73d771dfac7d292323805ebc428287df4f9"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in staged.iterdir():  # snapshot files are symlinks into blobs/, as huggingface_hub writes them
        blob = repo / "blobs" / f"sha-{f.name}"
        blob.write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    (repo / "snapshots" / "0000stale").mkdir()  # an older, empty revision is not picked
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert find_checkpoint("llama2-7b") == snapshot
    loaded, _ = load_model("llama2-7b")
    assert same_logits(loaded, model)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # $HF_HOME/hub
    assert find_checkpoint("llama2-7b") == snapshot
    monkeypatch.delenv("HF_HOME")
    (tmp_path / "home" / ".cache" / "huggingface").mkdir(parents=True)
    os.symlink(tmp_path / "hub", tmp_path / "home" / ".cache" / "huggingface" / "hub")  # the default place
    assert find_checkpoint("llama2-7b").resolve() == snapshot.resolve()


def test_llama_cli_checkpoint_folder(tmp_path, monkeypatch):
    model = tiny_as(monkeypatch, "llama3.1-8b", rope_theta=500000.0, rope_scaling=get_config("llama3.1-8b").rope_scaling)
    folder = tmp_path / "home" / ".llama" / "checkpoints" / "Llama3.1-8B"
    save_model(model, folder, format="meta")
    loaded, _ = load_model("llama3.1-8b")
    assert loaded.config.rope_scaling == get_config("llama3.1-8b").rope_scaling
    assert same_logits(loaded, model)


def test_hf_repo_original_subfolder(tmp_path, monkeypatch):
    model = tiny_as(monkeypatch, "llama3-8b", rope_theta=500000.0)
    repo = tmp_path / "models" / "Meta-Llama-3-8B"
    save_model(model, repo / "original", format="meta")
    (repo / "config.json").write_text("{}")  # the HF weights were not downloaded (--include original/*)
    monkeypatch.setenv("OWLORE_MODELS", str(tmp_path / "models"))
    assert find_checkpoint("llama3-8b") == repo / "original"
    assert same_logits(load_model("llama3-8b")[0], model)


def test_owlore_models_and_ckpt_dir_with_our_names(tmp_path, monkeypatch):
    model = tiny_as(monkeypatch, "mistral-7b", sliding_window=6, family="mistral")
    save_model(model, tmp_path / "models" / "mistral-7b", format="hf")
    monkeypatch.setenv("OWLORE_MODELS", str(tmp_path / "models"))
    assert same_logits(load_model("mistral-7b")[0], model)
    assert same_logits(load_model("mistral-7b", ckpt_dir=tmp_path / "models")[0], model)
    assert same_logits(load_model("mistral-7b", ckpt_dir=tmp_path / "models" / "mistral-7b")[0], model)


def test_not_found_lists_the_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("OWLORE_MODELS", str(tmp_path / "models"))
    with pytest.raises(CheckpointNotFound) as err:
        load_model("llama2-13b")
    message = str(err.value)
    assert "\n" not in message
    for place in (tmp_path / "models", tmp_path / "home" / ".cache" / "huggingface" / "hub",
                  tmp_path / "home" / ".llama" / "checkpoints"):  # fmt: skip
        assert str(place) in message
    assert "huggingface-cli download meta-llama/Llama-2-13b-hf" in message
    with pytest.raises(CheckpointNotFound, match=str(tmp_path / "nothing-here")):
        load_model("llama2-13b", ckpt_dir=tmp_path / "nothing-here")
