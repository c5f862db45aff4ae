"""Carry the real assets to a machine that reaches no package index, in parts small enough for each transfer.

Here:   python -m bench.stage pack [--out .stage] [--part-mib 52]
        a tar of the asset cache ($OWLORE_CACHE: the SmolLM2 GGUF, tokenizers, validation sets) plus the wheels
        of the packages the other machine lacks (`gguf`), cut into parts, and manifest.json with every sha256.
There:  python3 bench/stage.py join --parts DIR --cache DIR --site DIR
        checks each part and the whole, unpacks the cache and installs the wheels into --site (add it to
        PYTHONPATH). Parts may arrive one call at a time: `join --check` says which are still missing.

Standard library only, so that `join` runs on a bare interpreter before anything is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEELS = ("gguf",)  # packages the GPU machine's image lacks (its other needs are there)
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack(cache: Path, out: Path, part_bytes: int, wheels: tuple[str, ...] = WHEELS) -> dict:
    """Tar `cache` (less its downloaded wheels) and the wheels of `wheels` into parts of `part_bytes` in `out`."""
    from importlib.metadata import version

    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    for name in wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(out / "wheels"), f"{name}=={version(name)}"], check=True)
    whole = out / "assets.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:  # the validation arrows compress; 128 MiB -> 100 MiB: two transfers
        for path in sorted(cache.iterdir()):
            if path.name != "wheels":
                tar.add(path, arcname=path.name)
        for wheel in sorted((out / "wheels").iterdir()):
            tar.add(wheel, arcname=f"_wheels/{wheel.name}")
    shutil.rmtree(out / "wheels")
    parts = []
    with open(whole, "rb") as f:
        for i, block in enumerate(iter(lambda: f.read(part_bytes), b"")):
            part = out / f"part-{i:02d}"
            part.write_bytes(block)
            parts.append({"name": part.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    manifest = {"sha256": sha256(whole), "bytes": whole.stat().st_size, "parts": parts}
    whole.unlink()
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def missing(parts_dir: Path, manifest: dict) -> list[str]:
    """Parts not there yet, or there but not the part the manifest names."""
    bad = []
    for part in manifest["parts"]:
        path = parts_dir / part["name"]
        if not path.is_file() or path.stat().st_size != part["bytes"] or sha256(path) != part["sha256"]:
            bad.append(part["name"])
    return bad


def join(parts_dir: Path, cache: Path, site: Path) -> None:
    manifest = json.loads((parts_dir / MANIFEST).read_text())
    bad = missing(parts_dir, manifest)
    if bad:
        raise SystemExit(f"error: {parts_dir}: parts missing or corrupt: {', '.join(bad)}")
    whole = parts_dir / "assets.tar.gz"
    with open(whole, "wb") as out:
        for part in manifest["parts"]:
            with open(parts_dir / part["name"], "rb") as f:
                shutil.copyfileobj(f, out)
    if sha256(whole) != manifest["sha256"]:
        raise SystemExit(f"error: {whole}: the joined parts do not hash to the manifest's sha256")
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(whole) as tar:
        tar.extractall(cache, filter="data")  # no absolute paths, links out of the cache, or devices
    whole.unlink()
    site.mkdir(parents=True, exist_ok=True)
    for wheel in sorted((cache / "_wheels").glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:  # a pure-Python wheel installs by unzipping
            zf.extractall(site)
    print(f"staged {manifest['bytes'] / 2**20:.0f} MiB of assets into {cache}; wheels into {site}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench/stage.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--cache", default=os.environ.get("OWLORE_CACHE", Path.home() / ".cache" / "owlore"))
    a.add_argument("--out", default=".stage")
    a.add_argument("--part-mib", type=float, default=52.0)
    b = sub.add_parser("join")
    b.add_argument("--parts", required=True)
    b.add_argument("--cache", help="where the assets go (becomes $OWLORE_CACHE)")
    b.add_argument("--site", help="where the wheels go (add it to PYTHONPATH)")
    b.add_argument("--check", action="store_true", help="only list the parts still missing")
    args = p.parse_args(argv)
    if args.command == "pack":
        manifest = pack(Path(args.cache), Path(args.out), int(args.part_mib * 2**20))
        print(f"{Path(args.out)}: {len(manifest['parts'])} parts of at most {args.part_mib:g} MiB, "
              f"{manifest['bytes'] / 2**20:.0f} MiB in all")
    elif args.check:
        manifest = json.loads((Path(args.parts) / MANIFEST).read_text())
        print("missing: " + (", ".join(missing(Path(args.parts), manifest)) or "none"))
    elif args.cache and args.site:
        join(Path(args.parts), Path(args.cache), Path(args.site))
    else:
        p.error("join: --cache and --site are required (or --check)")


if __name__ == "__main__":
    main()
