"""A sharded (DCP) checkpoint never runs code: a crafted ``shards/.metadata`` is refused with one line on both
paths that read one (``train.py --resume RUN --fsdp`` and ``python -m training.export``), and the code in it
never runs; a real one still loads."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import train
from common import cli
from model.hf_format import read_hf_dir
from helpers import run
from training import export
from training.checkpoint import CheckpointError
from training.dcp_reader import read_metadata


class Payload:
    """Pickles as a call of os.system: unpickling it with plain pickle creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture(scope="module")
def sharded_run(tiny_dir, data_file, tmp_path_factory) -> Path:
    """One --fsdp step on one process: a DCP checkpoint (shards/.metadata) of a real run."""
    out = tmp_path_factory.mktemp("fsdp-run")
    run(tiny_dir, data_file, out, "--method", "full", "--max-steps", "1", "--fsdp")
    assert (out / "step-000001" / "shards" / ".metadata").is_file()
    return out


def test_real_metadata_reads_and_exports(sharded_run, tmp_path):
    metadata = read_metadata(sharded_run / "step-000001" / "shards" / ".metadata")
    assert "model.tok_embeddings.weight" in metadata.state_dict_metadata
    export.main([str(sharded_run), "--format", "hf", "--out", str(tmp_path / "hf")])
    _, state = read_hf_dir(tmp_path / "hf")
    saved = torch.load(sharded_run / "step-000001" / "trainer.pt", weights_only=True)
    assert saved["step"] == 1 and set(state) >= {"tok_embeddings.weight", "layers.0.attention.wq.weight"}


@pytest.mark.parametrize("path", ["export", "resume"])
def test_a_crafted_metadata_never_runs_and_is_one_line(sharded_run, tmp_path, path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(sharded_run, copy)
    metadata = copy / "step-000001" / "shards" / ".metadata"
    marker = tmp_path / "marker"
    metadata.write_bytes(pickle.dumps(Payload(marker)))
    argv = ([str(copy), "--format", "hf", "--out", str(tmp_path / "hf")] if path == "export" else
            ["--resume", str(copy), "--fsdp", "--max-steps", "2", "--allow-changes"])
    main = export.main if path == "export" else train.main
    with pytest.raises(SystemExit) as stop:
        cli.run(main, argv)
    message = str(stop.value)
    assert message.startswith(f"error: {metadata}: refused") and "system" in message and "\n" not in message
    assert not marker.exists()


def test_byte_entries_and_shard_paths_outside_the_folder_are_refused(sharded_run, tmp_path):
    """Byte entries are what DCP reads with torch.load(weights_only=False); a relative path may not leave."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    metadata = read_metadata(sharded_run / "step-000001" / "shards" / ".metadata")
    outside = next(iter(metadata.storage_data.values()))
    outside.relative_path = "../../elsewhere.distcp"
    (tmp_path / "outside").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"outside: refused \(a shard file outside its folder"):
        read_metadata(tmp_path / "outside")

    metadata = read_metadata(sharded_run / "step-000001" / "shards" / ".metadata")
    metadata.state_dict_metadata["model.extra"] = BytesStorageMetadata()
    (tmp_path / "bytes").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=r"refused \(it references .*BytesStorageMetadata"):
        read_metadata(tmp_path / "bytes")
