"""Megatron-LM's indexed dataset: ``PREFIX.bin`` (token ids) + ``PREFIX.idx`` (the index).

The ``.bin`` file is every sequence's token ids back to back, in one dtype, no header.
The ``.idx`` file, all integers little-endian::

    offset  size            field
    0       9               magic b"MMIDIDX\\x00\\x00"
    9       8   uint64      version, always 1
    17      1   uint8       dtype code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                            6 float64, 7 float32, 8 uint16
    18      8   uint64      S = number of sequences
    26      8   uint64      D = number of document boundaries (documents + 1)
    34      4*S int32       sizes: tokens in each sequence
    ..      8*S int64       pointers: byte offset of each sequence in the .bin
    ..      8*D int64       document indices: 0, then the sequence count after each document

For GPT data every document is one sequence, so the document indices are 0..S.
Token ids are stored as uint16 when the vocabulary has fewer than 65500 entries, else
int32 -- Megatron's choice, so both codebases read each other's files.
"""
from __future__ import annotations

import os
import struct

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = 34
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
DTYPE_CODES = {np.dtype(v): k for k, v in DTYPES.items()}


def best_dtype(vocab_size: int | None):
    """uint16 when every id fits (vocab < 65500, as Megatron decides), else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def write_index(path: str, dtype, sizes, doc_idx) -> None:
    """Write an ``.idx`` file for sequences of ``sizes`` tokens and the given document indices."""
    sizes = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        np.cumsum(sizes[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    doc_idx = np.asarray(doc_idx, dtype=np.int64)
    with open(path, "wb") as f:
        f.write(INDEX_MAGIC)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[np.dtype(dtype)]))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(sizes.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(doc_idx.astype("<i8").tobytes())


class IndexedDatasetBuilder:
    """Append documents to ``bin_path``; ``finalize(idx_path)`` writes the index.

    ``add_document(ids)`` adds one document of one sequence (the GPT case);
    ``add_index(prefix)`` appends a whole existing dataset (used to merge partitions).
    """

    def __init__(self, bin_path: str, dtype=np.int32):
        self.dtype = np.dtype(dtype)
        self.bin_path = bin_path
        self.file = open(bin_path, "wb")
        self.sizes: list[int] = []
        self.doc_idx: list[int] = [0]

    def add_document(self, ids) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.file.write(arr.astype(self.dtype.newbyteorder("<")).tobytes())
        self.sizes.append(arr.size)
        self.doc_idx.append(len(self.sizes))

    def add_index(self, prefix: str) -> None:
        other = IndexedDataset(prefix)
        if other.dtype != self.dtype:
            raise ValueError(f"cannot merge {prefix}: dtype {other.dtype} != {self.dtype}")
        base = len(self.sizes)
        self.sizes.extend(other.sizes.tolist())
        self.doc_idx.extend((other.doc_idx[1:] + base).tolist())
        del other
        with open(data_file_path(prefix), "rb") as f:
            while chunk := f.read(1 << 24):
                self.file.write(chunk)

    def finalize(self, idx_path: str) -> None:
        self.file.close()
        write_index(idx_path, self.dtype, self.sizes, self.doc_idx)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class IndexedDataset:
    """Memory-mapped reader of ``PREFIX.bin``/``PREFIX.idx``; ``ds[i]`` is sequence i.

    Everything the index claims is checked against the files on open, so a truncated
    or mismatched pair fails here with the reason, not later with garbage tokens.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        idx_path, bin_path = index_file_path(prefix), data_file_path(prefix)
        for p in (idx_path, bin_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"indexed dataset {prefix!r}: {p} does not exist "
                                        "(make it with tools/preprocess_data.py)")
        self._read_index(idx_path)
        self._check_bin(bin_path)
        self.bin = (np.memmap(bin_path, dtype=self.dtype, mode="r") if self.num_tokens
                    else np.zeros(0, dtype=self.dtype))

    def _read_index(self, path: str) -> None:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES or head[:9] != INDEX_MAGIC:
            raise ValueError(f"{path}: not a Megatron indexed-dataset index (bad magic "
                             f"{head[:9]!r}, expected {INDEX_MAGIC!r})")
        version, = struct.unpack("<Q", head[9:17])
        if version != INDEX_VERSION:
            raise ValueError(f"{path}: index version {version}, only version {INDEX_VERSION} "
                             "is supported (re-run tools/preprocess_data.py)")
        code = head[17]
        if code not in DTYPES:
            raise ValueError(f"{path}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPES[code])
        n_seq, n_doc = struct.unpack("<QQ", head[18:34])
        expected = HEADER_BYTES + 4 * n_seq + 8 * n_seq + 8 * n_doc
        if size < expected:
            raise ValueError(f"{path}: truncated index: {size} bytes, the header promises "
                             f"{n_seq} sequences and {n_doc} document indices ({expected} bytes)")
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        off = HEADER_BYTES
        self.sizes = np.frombuffer(mm, dtype="<i4", count=n_seq, offset=off)
        self.pointers = np.frombuffer(mm, dtype="<i8", count=n_seq, offset=off + 4 * n_seq)
        self.doc_idx = np.frombuffer(mm, dtype="<i8", count=n_doc, offset=off + 12 * n_seq)
        if n_doc == 0 or self.doc_idx[0] != 0 or self.doc_idx[-1] != n_seq:
            raise ValueError(f"{path}: document indices must run from 0 to the sequence count "
                             f"{n_seq}; the index is corrupt")

    def _check_bin(self, path: str) -> None:
        itemsize = self.dtype.itemsize
        self.num_tokens = int(self.sizes.sum(dtype=np.int64))
        if len(self.sizes):
            ends = self.pointers + self.sizes.astype(np.int64) * itemsize
            if self.pointers[0] != 0 or np.any(self.pointers[1:] != ends[:-1]):
                raise ValueError(f"{index_file_path(self.prefix)}: sequence pointers are not "
                                 "contiguous; the index is corrupt")
        need, have = self.num_tokens * itemsize, os.path.getsize(path)
        if have != need:
            what = "truncated" if have < need else "longer than its index"
            raise ValueError(f"{path} is {what}: {have} bytes, but {index_file_path(self.prefix)}"
                             f" describes {self.num_tokens} tokens of {self.dtype} ({need} bytes)."
                             " The pair does not match: re-run tools/preprocess_data.py")

    def __getstate__(self):  # reopen by path in DataLoader workers instead of copying
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefix"])

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_documents(self) -> int:
        return len(self.doc_idx) - 1

    def get(self, idx: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        """Tokens ``offset:offset+length`` of sequence ``idx`` (a read-only view)."""
        size = int(self.sizes[idx])
        if length is None:
            length = size - offset
        start = int(self.pointers[idx]) // self.dtype.itemsize + offset
        return self.bin[start:start + length]

    def __getitem__(self, idx: int) -> np.ndarray:
        return self.get(idx)
