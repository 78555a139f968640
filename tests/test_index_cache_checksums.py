"""Dataset-index cache files are checksummed when written and verified on load (issue 14, case 5).

A damaged cache file (same size, other bytes) used to be memory-mapped and used as it
was: the run trained on other samples than it should, silently.  Now the file fails its
checksum, a warning names it, and the entry is rebuilt (the arrays are a deterministic
function of the data and the flags), so the samples are the right ones.
"""
import glob
import json
import os

import numpy as np

from test_data_common import EOD, make_data
from megatron_sp.data.gpt_dataset import build_gpt_datasets
from megatron_sp.data.index_cache import cached_arrays


def _samples(ds):
    return [ds.get_tokens(i).tolist() for i in range(len(ds))]


def _build(prefix, cache):
    return build_gpt_datasets([prefix], "1", 8, 3, (40, 0, 0), EOD, cache_dir=cache)[0]


def test_a_damaged_cache_file_is_named_and_rebuilt(tmp_path, capsys):
    prefix, _ = make_data(tmp_path / "d", n_docs=30)
    cache = str(tmp_path / "c")
    truth = _samples(build_gpt_datasets([prefix], "1", 8, 3, (40, 0, 0), EOD, cache_dir=None)[0])
    assert _samples(_build(prefix, cache)) == truth
    meta = json.load(open(glob.glob(os.path.join(cache, "*-description.json"))[0]))
    assert set(meta["checksums"]) == set(meta["arrays"])  # recorded when written
    victim = glob.glob(os.path.join(cache, "*-shuffle_idx.npy"))[0]
    raw = bytearray(open(victim, "rb").read())
    first = len(raw) - np.load(victim).nbytes  # the array's first byte, after the .npy header
    raw[first:first + 4] = raw[first + 4:first + 8]  # same size: samples 0 and 1 now agree (int32)
    open(victim, "wb").write(bytes(raw))
    capsys.readouterr()
    assert _samples(_build(prefix, cache)) == truth
    err = capsys.readouterr().err
    assert f"{victim} fails its checksum" in err and "rebuilding" in err, err
    capsys.readouterr()
    assert _samples(_build(prefix, cache)) == truth and "checksum" not in capsys.readouterr().err  # repaired


def test_a_damaged_or_old_description_is_rebuilt_not_a_raw_error(tmp_path, capsys):
    cache = str(tmp_path / "c")
    build = lambda: {"a": np.arange(5)}  # noqa: E731
    cached_arrays(cache, {"x": 1}, build)
    desc = glob.glob(os.path.join(cache, "*-description.json"))[0]
    open(desc, "w").write("{not json")
    assert cached_arrays(cache, {"x": 1}, build)["a"].tolist() == list(range(5))
    assert f"{desc} cannot be read" in capsys.readouterr().err
    meta = json.load(open(desc))
    del meta["checksums"]  # written by an older version: nothing to verify against
    json.dump(meta, open(desc, "w"))
    assert cached_arrays(cache, {"x": 1}, build)["a"].tolist() == list(range(5))
    assert "without checksums" in capsys.readouterr().err
    assert "checksums" in json.load(open(desc))


def test_a_damaged_entry_that_cannot_be_rewritten_is_not_used(tmp_path, monkeypatch):
    import megatron_sp.data.index_cache as ic
    cache = str(tmp_path / "c")
    ic.cached_arrays(cache, {"x": 2}, lambda: {"a": np.arange(6)})
    victim = glob.glob(os.path.join(cache, "*-a.npy"))[0]
    raw = bytearray(open(victim, "rb").read())
    raw[-1] ^= 0xFF
    open(victim, "wb").write(bytes(raw))
    monkeypatch.setattr(ic, "_save", lambda *a: False)  # a read-only cache directory
    assert ic.cached_arrays(cache, {"x": 2}, lambda: {"a": np.arange(6)})["a"].tolist() == list(range(6))
