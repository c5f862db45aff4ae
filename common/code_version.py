"""The version of this checkout's code: a hash of its Python sources and recipes (tests aside).

What depends on the code and is kept between runs (finished reproduction runs, the memory report's cache)
is keyed by it, so that other code never reuses a result it did not make."""
from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@cache
def code_version() -> str:
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("*.py"), *ROOT.glob("*/*.py"), *ROOT.glob("*/*/*.py"), *ROOT.glob("recipes/*.yaml")]):
        if not path.relative_to(ROOT).parts[0].startswith((".", "tests")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:12]
