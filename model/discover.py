"""Where the weights of a named config are on this machine: the folder names people's downloads have.

``find_checkpoint("llama2-7b")`` looks, without any network, in ``$OWLORE_MODELS``, the Hugging Face hub
cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``: ``models--<org>--<repo>/
snapshots/<revision>/``) and the llama CLI's ``~/.llama/checkpoints``; ``find_checkpoint(name, root)``
looks only under ``root`` (``--ckpt-dir``), which may also be the checkpoint itself. Under each root a
checkpoint may sit in a folder named as we name the config, as Meta's download script names it
(``llama-2-7b``, ``Meta-Llama-3-8B``), as the llama CLI names it (``Llama-2-7b``, ``Llama3.1-8B``) or as the
HF repo is named; an HF folder's ``original/`` sub-folder (Meta's layout) is used when the folder itself
has no HF weights.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Known:
    hf_repos: tuple[str, ...]  # "org/repo" on the Hugging Face hub, most usual first
    folders: tuple[str, ...]  # Meta download script, llama CLI and other common folder names


KNOWN: dict[str, Known] = {
    "llama2-7b": Known(("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b"), ("llama-2-7b", "Llama-2-7b")),
    "llama2-13b": Known(("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b"), ("llama-2-13b", "Llama-2-13b")),
    "llama2-70b": Known(("meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b"), ("llama-2-70b", "Llama-2-70b")),
    "llama3-8b": Known(("meta-llama/Meta-Llama-3-8B",), ("Meta-Llama-3-8B", "Llama-3-8B", "Llama3-8B")),
    "llama3.1-8b": Known(("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B"),
                         ("Meta-Llama-3.1-8B", "Llama-3.1-8B", "Llama3.1-8B")),  # fmt: skip
    "mistral-7b": Known(("mistralai/Mistral-7B-v0.1",), ("mistral-7B-v0.1", "Mistral-7B-v0.1", "mistral-7b-v0.1")),
    "qwen2.5-0.5b": Known(("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"), ("Qwen2.5-0.5B", "Qwen2.5-0.5B-Instruct")),
    "smollm2-135m": Known(("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M"),
                          ("SmolLM2-135M-Instruct", "SmolLM2-135M")),  # fmt: skip
}


class CheckpointNotFound(FileNotFoundError):
    """No folder holding the named config's weights in any of `searched`."""

    def __init__(self, name: str, searched: list[Path]):
        self.name, self.searched = name, searched
        repo = KNOWN[name].hf_repos[0] if name in KNOWN else None
        how = f"`huggingface-cli download {repo}`" if repo else "download it"
        super().__init__(
            f"model {name!r} has no checkpoint here (searched {', '.join(map(str, searched)) or 'nothing'}); "
            f"get the weights with {how} or Meta's download script, or pass --ckpt-dir"
        )


def is_checkpoint(path: Path) -> bool:
    """A folder in one of the layouts `model.load` reads (Meta/Mistral or HF), or a .gguf file."""
    if path.is_file():
        return path.suffix == ".gguf"
    return (path / "params.json").is_file() or (path / "config.json").is_file()


def _usable(path: Path) -> Path | None:
    """The checkpoint at `path`: the folder itself, or its Meta-layout ``original/`` when it has no HF weights."""
    has_hf = (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    )
    if has_hf or (path / "params.json").is_file():
        return path
    if (path / "original" / "params.json").is_file():
        return path / "original"
    return path if is_checkpoint(path) else None


def hub_caches() -> list[Path]:
    """Hugging Face hub cache folders, in the order huggingface_hub itself resolves them."""
    caches = []
    if os.environ.get("HF_HUB_CACHE"):
        caches.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        caches.append(Path(os.environ["HF_HOME"]) / "hub")
    caches.append(Path.home() / ".cache" / "huggingface" / "hub")
    return list(dict.fromkeys(caches))


def hub_snapshot(cache: Path, repo: str) -> Path | None:
    """``models--org--repo/snapshots/<revision>``: the one ``refs/main`` names, else the newest."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    ref = folder / "refs" / "main"
    if ref.is_file() and (folder / "snapshots" / ref.read_text().strip()).is_dir():
        return folder / "snapshots" / ref.read_text().strip()
    snapshots = sorted((folder / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return snapshots[-1] if snapshots else None


def candidates(name: str, root: Path) -> list[Path]:
    """Paths under `root` where the named config's checkpoint may be."""
    known = KNOWN.get(name, Known((), ()))
    names = [name, *known.folders, *(repo.split("/")[1] for repo in known.hf_repos)]
    out = [root / n for n in dict.fromkeys(names)]
    out += [s for repo in known.hf_repos if (s := hub_snapshot(root, repo)) is not None]
    return out


def search_roots() -> list[Path]:
    """Where `find_checkpoint` looks when no --ckpt-dir is given."""
    roots = [Path(os.environ["OWLORE_MODELS"])] if os.environ.get("OWLORE_MODELS") else []
    return roots + hub_caches() + [Path.home() / ".llama" / "checkpoints"]


def find_checkpoint(name: str, root: str | Path | None = None) -> Path:
    """The checkpoint of the named config under `root` (or the standard places); CheckpointNotFound if none."""
    roots = [Path(root)] if root is not None else search_roots()
    for base in roots:
        for path in candidates(name, base):
            if path.exists() and (found := _usable(path)) is not None:
                return found
        if root is not None and (found := _usable(base)) is not None:  # --ckpt-dir is the checkpoint itself
            return found
    raise CheckpointNotFound(name, roots)
