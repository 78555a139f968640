"""Megatron indexed dataset: the exact byte layout, the reader's checks, merging."""
import os
import struct

import numpy as np
import pytest

from test_data_common import read_megatron_pair
from megatron_sp.data.indexed_dataset import (IndexedDataset, IndexedDatasetBuilder,
                                              best_dtype, write_index)

DOCS = [[5, 6, 7], [1], [65000, 2, 3, 4], [9, 9]]


def _write(tmp_path, docs=DOCS, dtype=np.uint16, name="d"):
    prefix = str(tmp_path / name)
    b = IndexedDatasetBuilder(prefix + ".bin", dtype)
    for d in docs:
        b.add_document(d)
    b.finalize(prefix + ".idx")
    return prefix


def test_dtype_choice_matches_megatron():
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32 and best_dtype(None) == np.int32


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_layout_is_megatron_and_reads_back(tmp_path, dtype):
    prefix = _write(tmp_path, dtype=dtype)
    raw = open(prefix + ".idx", "rb").read()
    # header, byte by byte, as documented by Megatron-LM
    assert raw[:9] == b"MMIDIDX\x00\x00"
    assert struct.unpack_from("<QBQQ", raw, 9) == (1, 8 if dtype == np.uint16 else 4, 4, 5)
    assert np.frombuffer(raw, "<i4", 4, 34).tolist() == [3, 1, 4, 2]
    item = np.dtype(dtype).itemsize
    assert np.frombuffer(raw, "<i8", 4, 50).tolist() == [0, 3 * item, 4 * item, 8 * item]
    assert np.frombuffer(raw, "<i8", 5, 82).tolist() == [0, 1, 2, 3, 4]
    assert len(raw) == 34 + 4 * 4 + 8 * 4 + 8 * 5
    # independent parser and our reader agree with the input
    got_dtype, docs = read_megatron_pair(prefix)
    assert got_dtype == np.dtype(dtype)
    assert [d.tolist() for d in docs] == DOCS
    ds = IndexedDataset(prefix)
    assert len(ds) == 4 and ds.num_documents == 4 and ds.num_tokens == 10
    assert [ds[i].tolist() for i in range(4)] == DOCS
    assert ds.get(2, 1, 2).tolist() == [2, 3]


def test_empty_dataset(tmp_path):
    prefix = _write(tmp_path, docs=[])
    ds = IndexedDataset(prefix)
    assert len(ds) == 0 and ds.num_tokens == 0


def test_truncated_bin_is_a_clear_error(tmp_path):
    prefix = _write(tmp_path)
    with open(prefix + ".bin", "r+b") as f:
        f.truncate(os.path.getsize(prefix + ".bin") - 2)
    with pytest.raises(ValueError, match=r"truncated.*10 tokens.*preprocess_data"):
        IndexedDataset(prefix)


def test_bin_from_another_dataset_is_a_clear_error(tmp_path):
    prefix = _write(tmp_path)
    other = _write(tmp_path, docs=DOCS + [[1, 2, 3]], name="other")
    os.replace(other + ".bin", prefix + ".bin")
    with pytest.raises(ValueError, match="longer than its index"):
        IndexedDataset(prefix)


def test_wrong_version_and_magic_and_truncated_index(tmp_path):
    prefix = _write(tmp_path)
    raw = bytearray(open(prefix + ".idx", "rb").read())
    bad = bytearray(raw)
    bad[9:17] = struct.pack("<Q", 2)
    open(prefix + ".idx", "wb").write(bad)
    with pytest.raises(ValueError, match="version 2"):
        IndexedDataset(prefix)
    bad = bytearray(raw)
    bad[:7] = b"NOTIDX!"
    open(prefix + ".idx", "wb").write(bad)
    with pytest.raises(ValueError, match="bad magic"):
        IndexedDataset(prefix)
    open(prefix + ".idx", "wb").write(raw[:-9])
    with pytest.raises(ValueError, match="truncated index"):
        IndexedDataset(prefix)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocess_data"):
        IndexedDataset(str(tmp_path / "nothing"))


def test_corrupt_pointers_detected(tmp_path):
    prefix = _write(tmp_path)
    write_index(prefix + ".idx", np.uint16, [3, 1, 4, 2], [0, 1, 2, 3, 4])
    raw = bytearray(open(prefix + ".idx", "rb").read())
    raw[50 + 8:50 + 16] = struct.pack("<q", 4)  # second pointer off by one byte
    open(prefix + ".idx", "wb").write(raw)
    with pytest.raises(ValueError, match="pointers"):
        IndexedDataset(prefix)


def test_merge_partitions_equals_single_write(tmp_path):
    a = _write(tmp_path, docs=DOCS[:2], name="a")
    b = _write(tmp_path, docs=DOCS[2:], name="b")
    merged = str(tmp_path / "m")
    builder = IndexedDatasetBuilder(merged + ".bin", np.uint16)
    builder.add_index(a)
    builder.add_index(b)
    builder.finalize(merged + ".idx")
    whole = _write(tmp_path, name="whole")
    for ext in (".bin", ".idx"):
        assert open(merged + ext, "rb").read() == open(whole + ext, "rb").read()
