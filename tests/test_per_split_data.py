"""Megatron-LM's per-split data paths: --train-data-path / --valid-data-path / --test-data-path
(each split its own blend, every document of its prefixes, no --split) and
--multiple-validation-sets with --full-validation (each validation prefix evaluated on its own,
in full)."""
import numpy as np
import pytest

from megatron_sp.arguments import build_parser, validate_args
from megatron_sp.data.indexed_dataset import IndexedDatasetBuilder
from megatron_sp.training.batches import build_datasets, build_tokenizer
from megatron_sp.training.loop import pretrain

TINY = ("--tokenizer-type NullTokenizer --vocab-size 128 --num-layers 1 --hidden-size 16 --num-attention-heads 2 "
        "--seq-length 16 --micro-batch-size 2 --global-batch-size 4 --lr 1e-3 --log-interval 1 --hidden-dropout 0 "
        "--attention-dropout 0 --eval-iters 1").split()


def _data(path, lo, n_docs=40, seed=0):
    """Documents of tokens in [lo, lo + 40), each ended by EOD (127)."""
    rng = np.random.RandomState(seed)
    b = IndexedDatasetBuilder(str(path) + ".bin", np.int32)
    for _ in range(n_docs):
        b.add_document(list(rng.randint(lo, lo + 40, rng.randint(4, 30))) + [127])
    b.finalize(str(path) + ".idx")
    return str(path)


@pytest.fixture
def prefixes(tmp_path):
    return [_data(tmp_path / name, lo, seed=i) for i, (name, lo) in enumerate((("a", 0), ("b", 40), ("c", 80)))]


def _validate(words):
    return validate_args(build_parser().parse_args(words), 1)


def _tokens(ds):
    return np.concatenate([ds[i]["tokens"].numpy() for i in range(len(ds))])


def test_each_split_is_its_own_blend(prefixes, tmp_path):
    a, b, c = prefixes
    argv = TINY + ["--train-iters", "4", "--eval-interval", "2", "--data-cache-path", str(tmp_path / "cache"),
                   "--train-data-path", a, "--valid-data-path", b, "--test-data-path", c]
    args = _validate(argv)
    train, valid, test = build_datasets(args, build_tokenizer(args))
    for ds, lo in ((train, 0), (valid, 40), (test, 80)):
        t = _tokens(ds)
        assert set(np.unique(t)) - {127} <= set(range(lo, lo + 40))  # only that split's prefix
    assert len(train) == 16 and len(valid) == 3 * 4 and len(test) == 4
    split_given = _validate(argv + ["--split", "1,1,1"])
    assert any(n.startswith("--split 1,1,1 has no effect here") for n in split_given.startup_notes)
    again = build_datasets(split_given, build_tokenizer(args))  # --split plays no part
    assert all(np.array_equal(_tokens(x), _tokens(y)) for x, y in zip((train, valid, test), again))
    no_test = _validate(argv[:-2])  # without --test-data-path: no test split, as Megatron
    assert build_datasets(no_test, build_tokenizer(no_test))[2] is None
    packed = _validate(argv + ["--reset-position-ids", "--reset-attention-mask"])  # per-split data packs too
    samples = list(build_datasets(packed, build_tokenizer(packed))[0])
    assert all("cu_seqlens" in x for x in samples)
    inner = [(x, e) for x in samples for e in (x["tokens"][:-1] == 127).nonzero().flatten().tolist()[:1]]
    assert inner, "the fixture's documents end inside some sample"
    for x, e in inner:  # positions restart after an EOD and the document starts say so
        assert x["position_ids"][e + 1] == 0 and e + 1 in x["cu_seqlens"].tolist()


def test_multiple_validation_sets_are_evaluated_each_in_full(prefixes, tmp_path, capsys):
    a, b, c = prefixes
    base = TINY + ["--train-iters", "2", "--eval-interval", "2", "--train-data-path", a, "--full-validation",
                   "--data-cache-path", str(tmp_path / "cache")]
    pretrain(base + ["--valid-data-path", b, c, "--multiple-validation-sets"])
    out = capsys.readouterr().out
    both = {name: float(ln.split("lm loss value:")[1].split("|")[0]) for ln in out.splitlines()
            for name in ("validation-0", "validation-1") if ln.startswith(f" {name} loss at iteration 2")}
    assert set(both) == {"validation-0", "validation-1"}
    assert "every whole global batch (--full-validation) of each of 2 validation sets" in out
    for name, prefix in (("validation-0", b), ("validation-1", c)):  # the same model, one set alone
        pretrain(base + ["--valid-data-path", prefix])
        alone = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(" validation loss at iteration 2")]
        assert float(alone[0].split("lm loss value:")[1].split("|")[0]) == pytest.approx(both[name], rel=1e-6)


@pytest.mark.parametrize("extra,needle", [
    (["--data-path", "X", "--train-data-path", "X"], "give exactly one of --mock-data, --data-path and the per-split"),
    (["--valid-data-path", "X"], "--valid-data-path without --train-data-path"),
    (["--train-data-path", "X", "--valid-data-path", "Y", "Z", "--multiple-validation-sets"],
     "--multiple-validation-sets needs --full-validation"),
    (["--train-data-path", "X", "--valid-data-path", "1", "Y", "2", "Z", "--multiple-validation-sets",
      "--full-validation"], "holds weights"),
    (["--mock-data", "--full-validation"], "--full-validation runs the whole validation set of --valid-data-path"),
])
def test_per_split_flag_errors_are_one_line(extra, needle):
    with pytest.raises(ValueError, match=needle):
        _validate(TINY + ["--train-iters", "1"] + extra)
