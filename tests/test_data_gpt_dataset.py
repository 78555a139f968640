"""GPT dataset: packing, epochs, shuffling by seed, splits, EOD masking, caching, errors."""
import os

import numpy as np
import pytest
import torch

from test_data_common import EOD, make_data
from dist_utils import run_distributed
from megatron_sp.data.gpt_dataset import (build_gpt_datasets, build_sample_indices,
                                          parse_split, split_bounds)


def test_parse_split_and_bounds():
    assert parse_split("969,30,1") == pytest.approx([0.969, 0.03, 0.001])
    assert parse_split("1") == [1.0, 0.0, 0.0]
    assert split_bounds(100, parse_split("80, 10, 10")) == [0, 80, 90, 100]
    for bad in ["", "a,b", "1,2,3,4", "-1,2", "0,0,0"]:
        with pytest.raises(ValueError, match="--split"):
            parse_split(bad)


def test_samples_are_windows_of_the_epoch_stream():
    sizes = np.array([3, 0, 5, 1, 7, 2], dtype=np.int32)
    ids = np.arange(6)
    arr = build_sample_indices(sizes, ids, seq_length=4, num_samples=10, seed=3)
    stream = np.concatenate([np.repeat(d, sizes[d]) * 100 + np.arange(sizes[d])
                             for d in arr["doc_idx"]])
    n = len(arr["sample_idx"]) - 1
    assert n >= 10 and n * 4 + 1 <= stream.size and len(arr["shuffle_idx"]) == n
    for j in range(n + 1):  # sample j spans stream[j*L] .. stream[(j+1)*L], rows j and j+1
        (p0, o0) = arr["sample_idx"][j]
        d = arr["doc_idx"][p0]
        assert stream[j * 4] == d * 100 + o0
    assert sorted(arr["shuffle_idx"].tolist()) == list(range(n))
    # the shuffle stays inside epochs: epoch 1 = samples starting in its 18 tokens
    first_epoch = -(-int(sizes.sum()) // 4)
    assert sorted(arr["shuffle_idx"][:first_epoch].tolist()) == list(range(first_epoch))


def test_packing_epochs_and_order(tmp_path):
    prefix, docs = make_data(tmp_path / "d")
    tokens = sum(len(d) for d in docs)
    L = 8
    per_epoch = (tokens - 1) // L
    train, valid, test = build_gpt_datasets([prefix], "1", L, 1234, (3 * per_epoch, 0, 0), EOD,
                                            cache_dir=str(tmp_path / "c"))
    assert valid is None and test is None and len(train) == 3 * per_epoch
    all_tok = set(t for d in docs for t in d)
    seen = set()
    for i in range(len(train)):
        s = train[i]
        assert s["tokens"].shape == (L,) and s["labels"].shape == (L,)
        assert torch.equal(s["tokens"][1:], s["labels"][:-1])
        assert torch.equal(s["position_ids"], torch.arange(L))
        # inside a document tokens follow each other; after an EOD a document starts
        t = train.get_tokens(i)
        seen.update(t.tolist())
        for a, b in zip(t[:-1], t[1:]):
            assert b == a + 1 or b == EOD or (a == EOD and b % 1000 == 0), (a, b)
    assert seen == all_tok  # epochs repeat and cover every token
    # first epoch: the samples are a permutation of the epoch's windows, seen before epoch 2
    first = {tuple(train.get_tokens(i)) for i in range(per_epoch)}
    assert len(first) == per_epoch


def test_seed_determines_order_and_layout_does_not(tmp_path):
    prefix, _ = make_data(tmp_path / "d")
    build = lambda seed, c: build_gpt_datasets([prefix], "1", 8, seed, (30, 0, 0), EOD,  # noqa
                                               cache_dir=str(tmp_path / c))[0]
    a, b, c = build(1, "x"), build(1, "y"), build(2, "z")
    ta = [a.get_tokens(i).tolist() for i in range(30)]
    assert ta == [b.get_tokens(i).tolist() for i in range(30)]
    assert ta != [c.get_tokens(i).tolist() for i in range(30)]
    # a longer run (more epochs) sees the same samples first: prefix of the same order
    longer = build_gpt_datasets([prefix], "1", 8, 1, (500, 0, 0), EOD, cache_dir=None)[0]
    assert [longer.get_tokens(i).tolist() for i in range(30)] == ta


def test_splits_use_disjoint_documents(tmp_path):
    prefix, docs = make_data(tmp_path / "d", n_docs=40)
    tr, va, te = build_gpt_datasets([prefix], "80,10,10", 4, 0, (50, 20, 20), EOD,
                                    cache_dir=str(tmp_path / "c"))
    doc_of = lambda ds: {t // 1000 for i in range(len(ds))  # noqa: E731
                         for t in ds.get_tokens(i).tolist() if t != EOD}
    a, b, c = doc_of(tr), doc_of(va), doc_of(te)
    assert a <= set(range(1, 33)) and b <= set(range(33, 37)) and c <= set(range(37, 41))


def test_eod_mask_loss(tmp_path):
    prefix, _ = make_data(tmp_path / "d")
    ds = build_gpt_datasets([prefix], "1", 16, 0, (10, 0, 0), EOD, eod_mask_loss=True,
                            cache_dir=str(tmp_path / "c"))[0]
    masked = 0
    for i in range(10):
        s = ds[i]
        assert torch.equal(s["loss_mask"] == 0, s["tokens"] == EOD)
        masked += int((s["loss_mask"] == 0).sum())
    assert masked > 0


def test_index_is_cached_and_refreshed_when_data_changes(tmp_path):
    prefix, _ = make_data(tmp_path / "d")
    cache = tmp_path / "cache"
    first = build_gpt_datasets([prefix], "1", 8, 0, (20, 0, 0), EOD, cache_dir=str(cache))[0]
    files = sorted(os.listdir(cache))
    assert len(files) == 4  # description + 3 arrays
    again = build_gpt_datasets([prefix], "1", 8, 0, (20, 0, 0), EOD, cache_dir=str(cache))[0]
    assert sorted(os.listdir(cache)) == files
    assert isinstance(again.shuffle_idx, np.memmap)  # loaded, not rebuilt
    assert [again.get_tokens(i).tolist() for i in range(20)] == \
        [first.get_tokens(i).tolist() for i in range(20)]
    make_data(tmp_path / "d", seed=1)  # different document lengths under the same prefix
    build_gpt_datasets([prefix], "1", 8, 0, (20, 0, 0), EOD, cache_dir=str(cache))
    assert len(os.listdir(cache)) == 8


def test_default_cache_is_next_to_the_data(tmp_path):
    prefix, _ = make_data(tmp_path / "d")
    build_gpt_datasets([prefix], "1", 8, 0, (5, 0, 0), EOD)
    assert len(os.listdir(tmp_path / "cache" / "GPTDataset_indices")) == 4


def _dist_build(rank, world, prefix, cache):
    ds = build_gpt_datasets([prefix], "1", 8, 7, (25, 0, 0), EOD, cache_dir=cache)[0]
    return [ds.get_tokens(i).tolist() for i in range(25)]


def test_rank0_builds_others_wait(tmp_path):
    prefix, _ = make_data(tmp_path / "d")
    cache = str(tmp_path / "cache")
    out = run_distributed(_dist_build, 2, prefix, cache, timeout=120)
    assert out[0] == out[1]
    assert len(os.listdir(cache)) == 4 and not [f for f in os.listdir(cache) if ".tmp" in f]
    local = build_gpt_datasets([prefix], "1", 8, 7, (25, 0, 0), EOD, cache_dir=None)[0]
    assert out[0] == [local.get_tokens(i).tolist() for i in range(25)]


def test_bad_inputs_name_the_flag(tmp_path):
    prefix, _ = make_data(tmp_path / "d", n_docs=3)
    with pytest.raises(ValueError, match="--data-path .*missing"):
        build_gpt_datasets([str(tmp_path / "missing")], "1", 8, 0, (5, 0, 0), EOD)
    with pytest.raises(ValueError, match="--split"):
        build_gpt_datasets([prefix], "x", 8, 0, (5, 0, 0), EOD)
    with pytest.raises(ValueError, match="--data-path"):
        build_gpt_datasets(["0.5", prefix, "0.5"], "1", 8, 0, (5, 0, 0), EOD)
    with pytest.raises(ValueError, match=r"valid split has no tokens \(0 of 3 documents\).*--split.*--eval-iters 0"):
        build_gpt_datasets([prefix], "99,1,0", 8, 0, (5, 5, 0), EOD)  # weight > 0, but 0 of 3 documents
    assert build_gpt_datasets([prefix], "1", 8, 0, (5, 5, 5), EOD)[1:] == (None, None)  # weight 0: no dataset
    with pytest.raises(IndexError):
        build_gpt_datasets([prefix], "1", 8, 0, (5, 0, 0), EOD, cache_dir=None)[0][5]
