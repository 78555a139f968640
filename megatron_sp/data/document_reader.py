"""Read documents from JSONL or plain-text inputs, with every bad line named and counted.

Both ``tools/preprocess_data.py`` and ``tools/train_tokenizer.py`` read their input here.

* ``*.jsonl``, ``*.json``, ``*.ndjson``: one JSON object per line; the document is the
  string under each of ``--json-keys`` (default ``text``).
* anything else is plain text: each line is one document (without its newline).

A line is *skipped* -- never silently, its ``file:line`` and the reason are reported --
when it is not UTF-8, not a JSON object, lacks a key, has a non-string value, or its
document is empty (only whitespace).
"""
from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


def expand_inputs(patterns: list[str], flag: str = "--input") -> list[str]:
    """Expand globs and directories into a sorted, de-duplicated list of files."""
    files: list[str] = []
    for pat in patterns:
        if os.path.isdir(pat):
            hits = sorted(os.path.join(pat, f) for f in os.listdir(pat)
                          if os.path.isfile(os.path.join(pat, f)))
        else:
            hits = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        hits = [h for h in hits if os.path.isfile(h)]
        if not hits:
            raise ValueError(f"{flag} {pat!r}: no such file (give JSONL or text files, "
                             "globs allowed)")
        files.extend(h for h in hits if h not in files)
    return files


def is_json_file(path: str) -> bool:
    return path.lower().endswith(JSON_SUFFIXES)


def iter_lines(files: list[str]):
    """Yield ``(file_index, line_number, raw_bytes)`` for every line of every file (1-based)."""
    for fi, path in enumerate(files):
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                yield fi, n, raw


def parse_line(raw: bytes, keys: list[str], is_json: bool):
    """``raw`` line -> ``(docs, None)`` with one string per key, or ``(None, reason)``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte {e.start})"
    if not is_json:
        text = line.rstrip("\r\n")
        return (([text] * len(keys), None) if text.strip() else (None, "empty document"))
    if not line.strip():
        return None, "empty document"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg})"
    if not isinstance(obj, dict):
        return None, "malformed JSON (not an object)"
    docs = []
    for k in keys:
        if k not in obj:
            return None, f"missing key {k!r}"
        if not isinstance(obj[k], str):
            return None, f"key {k!r} is not a string"
        if not obj[k].strip():
            return None, "empty document"
        docs.append(obj[k])
    return docs, None


class SkipLog:
    """Skipped lines grouped by reason; the summary lists the first few ``file:line`` each."""

    def __init__(self, files: list[str], show: int = 10):
        self.files, self.show = files, show
        self.by_reason: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def add(self, file_index: int, line: int, reason: str) -> None:
        self.by_reason[reason].append((file_index, line))

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_reason.values())

    def where(self, file_index: int, line: int) -> str:
        return f"{self.files[file_index]}:{line}"

    def summary_lines(self) -> list[str]:
        out = []
        for reason in sorted(self.by_reason, key=lambda r: -len(self.by_reason[r])):
            locs = self.by_reason[reason]
            shown = ", ".join(self.where(*loc) for loc in locs[:self.show])
            more = f" (+{len(locs) - self.show} more)" if len(locs) > self.show else ""
            out.append(f"  {len(locs):>8d}  {reason}: {shown}{more}")
        return out


def iter_documents(files: list[str], keys: list[str], skips: SkipLog | None = None):
    """Yield the documents (one string per key) of every good line; bad lines go to ``skips``."""
    json_flags = [is_json_file(f) for f in files]
    for fi, n, raw in iter_lines(files):
        docs, reason = parse_line(raw, keys, json_flags[fi])
        if docs is None:
            if skips is not None:
                skips.add(fi, n, reason)
            continue
        yield docs
