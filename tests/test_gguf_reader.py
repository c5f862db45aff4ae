"""model/gguf_reader.py: the same fields and tensors as the gguf package's reader, and one-line errors on
corrupt files."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import UserError
from model.gguf_reader import GGUFField, read_gguf_file

V = GGUFValueType
SCALARS = [  # (type, a value at the edge of its range)
    (V.UINT8, 255), (V.INT8, -128), (V.UINT16, 65535), (V.INT16, -32768), (V.UINT32, 2**32 - 1),
    (V.INT32, -(2**31)), (V.UINT64, 2**64 - 1), (V.INT64, -(2**63)), (V.FLOAT32, 0.1), (V.FLOAT64, 0.1),
    (V.BOOL, True), (V.BOOL, False),
]  # fmt: skip
ARRAYS = {
    "test.ints": ([3, -1, 2**31 - 1], V.INT32),
    "test.bytes": ([0, 7, 255], V.UINT8),
    "test.longs": ([2**63 - 1, -5], V.INT64),
    "test.floats": ([0.5, -1e-3, 3.25e30], V.FLOAT32),
    "test.doubles": ([1 / 3, -2.0], V.FLOAT64),
    "test.strings": (["", "a b", "héllo ✓", "Ġthe"], V.STRING),
    "test.bools": ([True, False, True], V.BOOL),
}
ROWS, COLS = 4, 64  # COLS: a multiple of the Q8_0/Q4_0 block of 32


def write_tiny(path, alignment: int | None = None, endianess: GGUFEndian = GGUFEndian.LITTLE) -> dict:
    """A GGUF file with every value type and F32/F16/Q8_0/Q4_0 tensors; the tensors' fp32 values by name."""
    w = GGUFWriter(path, "llama", endianess=endianess)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for i, (vtype, value) in enumerate(SCALARS):
        w.add_key_value(f"test.scalar.{i}", value, vtype)
    w.add_key_value("test.string", "SmolLM2 ✓", V.STRING)
    w.add_key_value("test.empty_string", "", V.STRING)
    for key, (values, etype) in ARRAYS.items():
        w.add_key_value(key, values, V.ARRAY, etype)
    w.add_key_value("test.nested", [[1, 2], [3]], V.ARRAY, V.ARRAY)
    rng = np.random.default_rng(0)
    values = {}
    for name, qtype in [("f32", "F32"), ("f16", "F16"), ("q8", "Q8_0"), ("q4", "Q4_0")]:
        x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        raw = quantize(x, GGMLQuantizationType[qtype])
        values[name] = dequantize(raw, GGMLQuantizationType[qtype])
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=GGMLQuantizationType[qtype])
    values["vector"] = np.arange(5, dtype=np.float32)  # 5 * 4 bytes: the next tensor needs padding
    w.add_tensor("vector", values["vector"])
    values["last"] = np.ones(3, dtype=np.float32)
    w.add_tensor("last", values["last"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return values


def theirs(path) -> tuple[dict, GGUFReader]:
    reader = GGUFReader(path)
    fields = {k: (f.contents(), f.types[0], f.types[1] if len(f.types) > 1 else None)
              for k, f in reader.fields.items() if not k.startswith("GGUF.")}  # fmt: skip
    return fields, reader


def assert_same_as_gguf_package(path) -> None:
    ours = read_gguf_file(path)
    fields, reader = theirs(path)
    tensors = reader.tensors
    assert list(ours.fields) == list(fields)  # same keys, same order
    for key, expected in fields.items():
        assert tuple(ours.fields[key]) == expected, key
        value = ours.fields[key].value
        kinds = [type(v) for v in (value if isinstance(value, list) else [value])]
        assert kinds == [type(v) for v in (expected[0] if isinstance(expected[0], list) else [expected[0]])], key
    assert [t.name for t in ours.tensors] == [t.name for t in tensors]
    assert ours.data_offset == reader.data_offset
    assert [t.offset for t in ours.tensors] == [t.data_offset for t in tensors]
    for mine, their in zip(ours.tensors, tensors):
        assert mine.tensor_type == their.tensor_type and mine.shape == tuple(their.shape.tolist())
        assert mine.data.shape == their.data.shape and mine.data.dtype == their.data.dtype, mine.name
        assert not mine.data.flags.writeable
        assert np.array_equal(mine.data, their.data)
        assert np.array_equal(dequantize(mine.data, mine.tensor_type), dequantize(their.data, their.tensor_type),
                              equal_nan=True)  # NaN: the package's F32 "dequantization" of a big-endian file


@pytest.mark.interop
@pytest.mark.parametrize("alignment", [None, 64, 256])
def test_tiny_file_reads_as_the_gguf_package_reads_it(tmp_path, alignment):
    write_tiny(tmp_path / "t.gguf", alignment)
    assert_same_as_gguf_package(tmp_path / "t.gguf")
    assert read_gguf_file(tmp_path / "t.gguf").alignment == (alignment or 32)


@pytest.mark.interop
def test_big_endian_file_reads_as_the_gguf_package_reads_it(tmp_path):
    write_tiny(tmp_path / "be.gguf", endianess=GGUFEndian.BIG)
    assert_same_as_gguf_package(tmp_path / "be.gguf")


@pytest.mark.parametrize("endianess", [GGUFEndian.LITTLE, GGUFEndian.BIG])
def test_values_and_tensors_are_those_written(tmp_path, endianess):
    expected = write_tiny(tmp_path / "t.gguf", alignment=64, endianess=endianess)
    f = read_gguf_file(tmp_path / "t.gguf")
    assert (f.version, f.alignment, f.data_offset % 64) == (3, 64, 0)
    for i, (vtype, value) in enumerate(SCALARS):
        read = f.fields[f"test.scalar.{i}"]
        expect = float(np.float32(value)) if vtype == V.FLOAT32 else value
        assert read == GGUFField(expect, vtype, None) and type(read.value) is type(value)
    assert f.fields["test.string"] == ("SmolLM2 ✓", V.STRING, None)
    assert f.fields["test.empty_string"] == ("", V.STRING, None)
    for key, (values, etype) in ARRAYS.items():
        if etype == V.FLOAT32:
            values = np.float32(values).tolist()
        assert f.fields[key] == (values, V.ARRAY, etype), key
    assert f.fields["test.nested"] == ([1, 2, 3], V.ARRAY, V.ARRAY)  # flattened, as the gguf package does
    assert f.fields["general.architecture"] == ("llama", V.STRING, None)
    assert [t.name for t in f.tensors] == list(expected)
    for t in f.tensors:
        assert t.shape == tuple(reversed(expected[t.name].shape))
        plain = t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16)  # their values, any byte order
        assert np.array_equal(t.data if plain else dequantize(t.data, t.tensor_type), expected[t.name]), t.name
    assert f.tensors[3].tensor_type == GGMLQuantizationType.Q4_0 and f.tensors[3].data.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.interop
def test_smollm2_reads_as_the_gguf_package_reads_it():
    from common.assets import asset_path

    assert_same_as_gguf_package(asset_path("smollm2-135m"))


# ---- corrupt files: one ValueError naming the file, whatever is wrong


def _end_of_data(path) -> int:
    f = read_gguf_file(path)
    return max(t.offset + t.data.nbytes for t in f.tensors)


def test_every_truncation_is_a_value_error_naming_the_file(tmp_path):
    cut = tmp_path / "cut.gguf"
    write_tiny(cut)
    header, end = read_gguf_file(cut).data_offset, _end_of_data(cut)
    os.truncate(cut, end)  # only the last tensor's padding missing: still whole
    assert len(read_gguf_file(cut).tensors) == 6
    for n in [end - 1, *range(end - 2, header, -53), *range(header, -1, -1)]:  # every byte of the header
        os.truncate(cut, n)
        with pytest.raises(UserError, match=r"cut\.gguf: not a readable GGUF file \(") as err:
            read_gguf_file(cut)
        assert "\n" not in str(err.value)


def _patched(tmp_path, offset_of, fmt: str, value) -> object:
    """The tiny file with `value` packed over the bytes at `offset_of(file bytes)`."""
    write_tiny(tmp_path / "t.gguf")
    data = bytearray((tmp_path / "t.gguf").read_bytes())
    at = offset_of(bytes(data))
    data[at : at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    return tmp_path / "bad.gguf"


def _after(key: bytes, skip: int = 0):
    return lambda data: data.index(key) + len(key) + skip


@pytest.mark.parametrize(
    "offset_of, fmt, value, cause",
    [
        (lambda d: 0, "<4s", b"GGUX", r"starts with b'GGUX', not b'GGUF'"),
        (lambda d: 4, "<I", 1, "GGUF version 1; versions 2, 3 are supported"),
        (lambda d: 8, "<Q", 2**60, "key/values and 1152921504606846976 tensors cannot fit"),
        (_after(b"test.string", 4), "<Q", 2**62, "the value of test.string at byte .* would end at byte 46116860184273"),
        (_after(b"test.strings", 8), "<Q", 2**40, "the 1099511627776 strings of test.strings at byte .* would end at byte"),
        (_after(b"test.ints", 8), "<Q", 2**40, "the 1099511627776 elements of test.ints"),
        (_after(b"test.ints", 4), "<I", 99, "the element type of test.ints is 99, not a GGUF value type"),
        (_after(b"test.string"), "<I", 77, "the type of test.string is 77, not a GGUF value type"),
        (_after(b"q8", 4), "<Q", 2**40, "the data of tensor q8 at byte .* would end at byte"),  # its first dimension
        (_after(b"q8", 4 + 16), "<I", 1234, "tensor q8 has unknown ggml type 1234"),
        (_after(b"q8", 4 + 16 + 4), "<Q", 2**50, "the data of tensor q8 at byte"),
        (_after(b"q8", 4), "<Q", 65, "tensor q8: Quantized tensor row size \\(65\\) is not a multiple"),
        (_after(b"test.string", 12), "<2s", b"\xff\xfe", "the value of test.string at byte .* is not UTF-8"),
        (_after(b"test.strings", 16 + 8 + 8), "<2s", b"\xc3\x28", "a string of test.strings at byte .* is not UTF-8"),
    ],
)  # fmt: skip
def test_a_corrupt_header_is_a_value_error_naming_the_file(tmp_path, offset_of, fmt, value, cause):
    bad = _patched(tmp_path, offset_of, fmt, value)
    with pytest.raises(ValueError, match=r"^\S*bad\.gguf: not a readable GGUF file \(.*" + cause) as err:
        read_gguf_file(bad)
    assert "\n" not in str(err.value)


def test_bad_alignment_duplicates_and_empty_files_are_value_errors(tmp_path):
    def write(name, *fields):
        w = GGUFWriter(tmp_path / name, "llama")
        for field in fields:
            w.add_key_value(*field)
        w.add_tensor("xa", np.zeros(4, dtype=np.float32))
        w.add_tensor("xb", np.zeros(4, dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return tmp_path / name

    with pytest.raises(ValueError, match=r"a\.gguf: .*general.alignment 48 is not a power of two"):
        read_gguf_file(write("a.gguf", ("general.alignment", 48, V.UINT32)))
    with pytest.raises(ValueError, match=r"b\.gguf: .*general.alignment is a INT32, not a UINT32"):
        read_gguf_file(write("b.gguf", ("general.alignment", 64, V.INT32)))
    data = write("c.gguf", ("test.k1", 1, V.UINT32), ("test.k2", 2, V.UINT32)).read_bytes()
    assert read_gguf_file(tmp_path / "c.gguf").fields["test.k2"].value == 2
    (tmp_path / "c.gguf").write_bytes(data.replace(b"test.k2", b"test.k1"))
    with pytest.raises(ValueError, match=r"c\.gguf: .*key test.k1 appears twice"):
        read_gguf_file(tmp_path / "c.gguf")
    (tmp_path / "d.gguf").write_bytes(data.replace(b"xb", b"xa"))
    with pytest.raises(ValueError, match=r"d\.gguf: .*two tensors have the same name"):
        read_gguf_file(tmp_path / "d.gguf")
    (tmp_path / "e.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match=r"e\.gguf: not a readable GGUF file \(it is empty\)"):
        read_gguf_file(tmp_path / "e.gguf")


# ---- any metadata written is read back

_INT_RANGES = {V.UINT8: (0, 2**8 - 1), V.INT8: (-(2**7), 2**7 - 1), V.UINT16: (0, 2**16 - 1),
               V.INT16: (-(2**15), 2**15 - 1), V.UINT32: (0, 2**32 - 1), V.INT32: (-(2**31), 2**31 - 1),
               V.UINT64: (0, 2**64 - 1), V.INT64: (-(2**63), 2**63 - 1)}  # fmt: skip


def _values(vtype: GGUFValueType) -> st.SearchStrategy:
    if vtype in _INT_RANGES:
        return st.integers(*_INT_RANGES[vtype])
    if vtype == V.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype == V.FLOAT64:
        return st.floats(allow_nan=False)
    return st.booleans() if vtype == V.BOOL else st.text()


@st.composite
def _field(draw) -> tuple:
    vtype = draw(st.sampled_from([*_INT_RANGES, V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING, V.ARRAY]))
    if vtype != V.ARRAY:
        return draw(_values(vtype)), vtype, None
    etype = draw(st.sampled_from([*_INT_RANGES, V.FLOAT32, V.FLOAT64, V.BOOL, V.STRING]))
    return draw(st.lists(_values(etype), min_size=1, max_size=20)), vtype, etype


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1).filter(lambda k: k != "general.architecture"), _field(), max_size=8))
def test_any_metadata_written_reads_back_equal(tmp_path_factory, fields):
    path = tmp_path_factory.mktemp("h") / "h.gguf"
    w = GGUFWriter(path, "llama")
    for key, field in fields.items():
        w.add_key_value(key, *field)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    read = read_gguf_file(path).fields
    assert list(read) == ["general.architecture", *fields]
    for key, (value, vtype, etype) in fields.items():
        assert read[key] == (value, vtype, etype), key


def test_a_big_endian_model_is_refused_in_one_line_not_read_wrong(tmp_path):
    from model.gguf_format import read_gguf

    write_tiny(tmp_path / "be.gguf", endianess=GGUFEndian.BIG)
    assert read_gguf_file(tmp_path / "be.gguf").big_endian and not read_gguf_file(write_little(tmp_path)).big_endian
    with pytest.raises(UserError, match=r"be\.gguf: a big-endian GGUF file; only little-endian weights are read"):
        read_gguf(tmp_path / "be.gguf")


def write_little(tmp_path):
    write_tiny(tmp_path / "le.gguf")
    return tmp_path / "le.gguf"
