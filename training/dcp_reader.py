"""Reading a DCP checkpoint (``shards/``) without running code from it.

torch's FileSystemReader loads ``shards/.metadata`` with plain ``pickle.load``: a crafted file runs any code.
`SafeReader` unpickles it with a restricted unpickler that admits only the types DCP writes there (its metadata
dataclasses, torch.Size, dtypes, layouts, paths) and refuses anything else before it is called. Byte entries
(which DCP loads with ``torch.load(weights_only=False)``) are not admitted either: our checkpoints hold tensors
only, which DCP reads with ``weights_only=True``. Every shard file the metadata points to must lie in the folder.
`load_tensors` is the one way this project fills tensors from a DCP folder, in one process or on every rank.
"""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from common.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be written, read or applied; the message names the file."""

_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED = frozenset({
    *((_METADATA, name) for name in ("Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
                                     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by its name, from torch's own table
    *(("pathlib", name) for name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
})


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in ALLOWED and not dtype:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is not checkpoint metadata")
        return super().find_class(module, name)


def read_metadata(file: Path) -> Metadata:
    """A DCP ``.metadata`` file, unpickled with only the checkpoint-metadata types; a tampered, foreign or
    damaged file is a CheckpointError naming it."""
    try:
        with open(file, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; the checkpoint is incomplete") from None
    except Exception as err:  # refused global, truncated stream, a bad __setstate__ value: many types
        cause = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{file}: refused ({cause}); not a checkpoint this project wrote") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"{file}: refused (holds a {type(metadata).__name__}, not DCP metadata)")
    for info in metadata.storage_data.values():
        relative = getattr(info, "relative_path", None)
        if not isinstance(relative, str) or Path(relative).name != relative or relative in ("", ".", ".."):
            raise CheckpointError(f"{file}: refused (a shard file outside its folder: {relative!r})")
    return metadata


class SafeReader(FileSystemReader):
    """torch's FileSystemReader with `read_metadata` above: ``dcp.load(..., storage_reader=SafeReader(dir))``."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")
        metadata = read_metadata(Path(self._get_metadata_path(rank)))
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def load_tensors(shards: Path, state: dict) -> None:
    """Fill the tensors of `state` (plain or DTensors, nested dicts keyed as saved) in place from the DCP
    folder `shards`, through `SafeReader`; with a process group a collective (every rank calls it), without
    one a read in this process alone. Only the keys of `state` are read."""
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=SafeReader(shards), no_dist=not dist.is_initialized())
    except CheckpointError:
        raise
    except (CheckpointException, Exception) as err:  # a truncated or missing shard file: DCP raises many types
        raise CheckpointError(f"{shards}: cannot be read ({failure(err)}); resume from an earlier checkpoint") from None


def failure(err: BaseException) -> str:
    """The first line of what went wrong, also inside DCP's CheckpointException (a BaseException holding each
    rank's exception)."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
