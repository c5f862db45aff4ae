"""Reading a GGUF file: its typed key/values and its tensors' names, types, shapes and bytes (memory-mapped).

The layout (GGUF versions 2 and 3): the magic ``GGUF``; a uint32 version; uint64 tensor and key/value counts;
the key/values (a string key, a uint32 value type, the value: a scalar, a uint64-length UTF-8 string, or an
array of a uint32 element type, a uint64 count and the elements, arrays possibly nested); the tensor infos
(name, uint32 dimension count, uint64 dimensions fastest first, uint32 ggml type, uint64 offset); padding to
``general.alignment`` (32 when absent); then the tensor data, each at its offset from there. Numbers are
little-endian, or all big-endian in a file written so (its version then reads as a multiple of 65536).

Values are what the gguf package's reader gives as a field's ``contents()`` (nested arrays flattened, as
there), and tensor data is shaped as there, so ``gguf.quants.dequantize(tensor.data, tensor.tensor_type)`` works on it.
Every length is checked against the file size before anything is read, so a corrupt file raises `UserError`
(a ValueError) naming the file, never a huge allocation.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape

from common.errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_SCALAR_CODES = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d", GGUFValueType.BOOL: "?",
}  # fmt: skip
# ggml types stored as plain numbers (one element per item); every other type is bytes of quantized blocks.
_PLAIN_DTYPES = {
    GGMLQuantizationType.F32: "f4", GGMLQuantizationType.F16: "f2", GGMLQuantizationType.F64: "f8",
    GGMLQuantizationType.I8: "i1", GGMLQuantizationType.I16: "i2", GGMLQuantizationType.I32: "i4",
    GGMLQuantizationType.I64: "i8",
}  # fmt: skip
_MIN_KV_BYTES = 8 + 4  # an empty key and a value type
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # an empty name, no dimensions, a type and an offset


class GGUFField(NamedTuple):
    """One key's value, its GGUF value type, and for an array its element type (None for scalars)."""

    value: Any
    type: GGUFValueType
    element_type: GGUFValueType | None


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    tensor_type: GGMLQuantizationType
    offset: int  # where its data starts in the file
    data: np.ndarray  # a read-only view of the file: numbers for F32/F16/..., uint8 blocks for quantized types


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    alignment: int
    data_offset: int  # where the tensor data starts
    fields: Mapping[str, GGUFField]  # in file order; the header counts (gguf's "GGUF.*" keys) are not fields
    tensors: tuple[GGUFTensor, ...]
    big_endian: bool = False


class _Cursor:
    """Reads numbers and strings from a buffer at a moving position, checking each length first."""

    def __init__(self, buf: memoryview, path: Path, order: str = "<"):
        self.buf, self.size, self.path, self.order, self.pos = buf, len(buf), path, order, 0

    def fail(self, cause: str) -> UserError:
        return UserError(f"{self.path}: not a readable GGUF file ({cause})")

    def need(self, n: int, what: str) -> int:
        """The current position, after checking that `n` bytes of `what` lie before the end of the file."""
        if n > self.size - self.pos:
            raise self.fail(f"{what} at byte {self.pos} would end at byte {self.pos + n}, past the end ({self.size})")
        return self.pos

    def scalar(self, code: str, what: str) -> Any:
        fmt = self.order + code
        start = self.need(struct.calcsize(fmt), what)
        self.pos += struct.calcsize(fmt)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str) -> str:
        n = self.scalar("Q", f"the length of {what}")
        start = self.need(n, what)
        self.pos += n
        try:
            return str(self.buf[start : start + n], "utf-8")
        except UnicodeDecodeError as err:
            raise self.fail(f"{what} at byte {start} is not UTF-8: {err.reason}") from None

    def value(self, vtype: GGUFValueType, key: str) -> Any:
        """A scalar or a string."""
        if vtype == GGUFValueType.STRING:
            return self.string(f"the value of {key}")
        return self.scalar(_SCALAR_CODES[vtype], f"the value of {key}")

    def value_type(self, what: str) -> GGUFValueType:
        raw = self.scalar("I", what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.fail(f"{what} is {raw}, not a GGUF value type") from None

    def array_into(self, out: list, key: str) -> GGUFValueType:
        """Appends the array's elements (nested arrays' elements, flattened) to `out`; its element type."""
        etype = self.value_type(f"the element type of {key}")
        n = self.scalar("Q", f"the length of {key}")
        if etype in _SCALAR_CODES:
            dtype = np.dtype(self.order + _SCALAR_CODES[etype])
            start = self.need(n * dtype.itemsize, f"the {n} elements of {key}")
            self.pos += n * dtype.itemsize
            out.extend(np.frombuffer(self.buf, dtype, n, start).tolist())
        elif etype == GGUFValueType.STRING:
            self.need(8 * n, f"the {n} strings of {key}")  # each has at least its length
            self.strings_into(out, n, key)
        else:
            self.need(12 * n, f"the {n} arrays of {key}")  # each has at least a type and a length
            for _ in range(n):
                self.array_into(out, key)
        return etype

    def strings_into(self, out: list, n: int, key: str) -> None:
        """`n` length-prefixed strings; the loop of `string` inlined, as vocabularies hold ~10^5 of them."""
        buf, size, pos = self.buf, self.size, self.pos
        length_at = struct.Struct(self.order + "Q").unpack_from
        try:
            for _ in range(n):
                if pos + 8 > size:
                    raise self.fail(f"a string of {key} at byte {pos} would end past the end ({size})")
                end = pos + 8 + length_at(buf, pos)[0]
                if end > size:
                    raise self.fail(f"a string of {key} at byte {pos} would end at byte {end}, past the end ({size})")
                out.append(str(buf[pos + 8 : end], "utf-8"))
                pos = end
        except UnicodeDecodeError as err:
            raise self.fail(f"a string of {key} at byte {pos} is not UTF-8: {err.reason}") from None
        self.pos = pos


def _fields(cur: _Cursor, count: int) -> dict[str, GGUFField]:
    fields: dict[str, GGUFField] = {}
    for i in range(count):
        key = cur.string(f"key {i}")
        vtype = cur.value_type(f"the type of {key}")
        if key in fields:
            raise cur.fail(f"key {key} appears twice")
        if vtype == GGUFValueType.ARRAY:
            value: list = []
            fields[key] = GGUFField(value, vtype, cur.array_into(value, key))
        else:
            fields[key] = GGUFField(cur.value(vtype, key), vtype, None)
    return fields


def _tensor_infos(cur: _Cursor, count: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, GGUF-order shape, raw ggml type, offset into the data) of each tensor."""
    infos = []
    for i in range(count):
        name = cur.string(f"the name of tensor {i}")
        n_dims = cur.scalar("I", f"the dimension count of {name}")
        start = cur.need(8 * n_dims, f"the {n_dims} dimensions of {name}")
        shape = struct.unpack_from(f"{cur.order}{n_dims}Q", cur.buf, start)
        cur.pos += 8 * n_dims
        infos.append((name, shape, cur.scalar("I", f"the type of {name}"), cur.scalar("Q", f"the offset of {name}")))
    return infos


def _alignment(cur: _Cursor, fields: Mapping[str, GGUFField]) -> int:
    field = fields.get("general.alignment")
    if field is None:
        return DEFAULT_ALIGNMENT
    if field.type != GGUFValueType.UINT32:
        raise cur.fail(f"general.alignment is a {field.type.name}, not a UINT32")
    if field.value == 0 or field.value & (field.value - 1):
        raise cur.fail(f"general.alignment {field.value} is not a power of two")
    return field.value


def _tensor(cur: _Cursor, mapped: np.memmap, data_offset: int, info: tuple) -> GGUFTensor:
    name, shape, raw_type, offset = info
    try:
        qtype = GGMLQuantizationType(raw_type)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise cur.fail(f"tensor {name} has unknown ggml type {raw_type}") from None
    n_elements = math.prod(shape)
    n_bytes = n_elements * type_size // block_size
    cur.pos = data_offset + offset
    start = cur.need(n_bytes, f"the data of tensor {name}")
    array_shape = tuple(reversed(shape))
    if qtype in _PLAIN_DTYPES:
        dtype = np.dtype(cur.order + _PLAIN_DTYPES[qtype])
    else:
        dtype = np.dtype(np.uint8)
        try:
            array_shape = quant_shape_to_byte_shape(array_shape, qtype)
        except ValueError as err:
            raise cur.fail(f"tensor {name}: {err}") from None
    data = mapped[start : start + n_bytes].view(dtype).reshape(array_shape)
    return GGUFTensor(name, tuple(int(n) for n in shape), qtype, start, data)


def read_gguf_file(path: str | os.PathLike) -> GGUFFile:
    """The key/values and tensors of a GGUF file (version 2 or 3); tensor data stays in the file, mapped."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: not a readable GGUF file (it is empty)")
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(memoryview(mapped), path)
    magic = bytes(cur.buf[cur.need(4, "the magic") : 4])
    if magic != MAGIC:
        raise cur.fail(f"it starts with {magic!r}, not {MAGIC!r}")
    cur.pos = 4
    version = cur.scalar("I", "the version")
    if version & 0xFFFF == 0:  # written big-endian
        cur.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in VERSIONS:
        raise cur.fail(f"GGUF version {version}; versions {', '.join(map(str, VERSIONS))} are supported")
    n_tensors, n_kv = cur.scalar("Q", "the tensor count"), cur.scalar("Q", "the key/value count")
    if n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_INFO_BYTES > size - cur.pos:
        raise cur.fail(f"{n_kv} key/values and {n_tensors} tensors cannot fit in its {size} bytes")
    fields = _fields(cur, n_kv)
    infos = _tensor_infos(cur, n_tensors)
    alignment = _alignment(cur, fields)
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = tuple(_tensor(cur, mapped, data_offset, info) for info in infos)
    if len({t.name for t in tensors}) != len(tensors):
        raise cur.fail("two tensors have the same name")
    return GGUFFile(path, version, alignment, data_offset, MappingProxyType(fields), tensors, cur.order == ">")
