"""Blending: --data-path weights, the schedule follows them, samples come from the right data."""
import numpy as np
import pytest

from test_data_common import EOD, make_data
from megatron_sp.data.blended_dataset import blend_schedule, parse_data_path
from megatron_sp.data.gpt_dataset import build_gpt_datasets


@pytest.mark.parametrize("weights", [[0.3, 0.7], [1, 1, 2], [0.05, 0.9, 0.05], [1.0, 0.0]])
def test_schedule_follows_weights_in_every_prefix(weights):
    n = 2000
    sched = blend_schedule(weights, n)
    w = np.asarray(weights, float) / sum(weights)
    counts = np.zeros(len(w))
    for i, d in enumerate(sched, 1):
        counts[d] += 1
        assert np.all(np.abs(counts - i * w) <= 1.0 + 1e-9), (i, counts, i * w)
    assert np.array_equal(blend_schedule(weights, 100), sched[:100])  # prefix-stable


def test_parse_data_path(tmp_path):
    a, _ = make_data(tmp_path / "a", n_docs=5)
    b, _ = make_data(tmp_path / "b", n_docs=15, seed=3)
    assert parse_data_path([a]) == ([a], [1.0])
    prefixes, w = parse_data_path(["3", a, "1", b])
    assert prefixes == [a, b] and w == pytest.approx([0.75, 0.25])
    prefixes, w = parse_data_path([a, b])  # no weights: by token count
    from megatron_sp.data.indexed_dataset import IndexedDataset
    na, nb = IndexedDataset(a).num_tokens, IndexedDataset(b).num_tokens
    assert w == pytest.approx([na / (na + nb), nb / (na + nb)])
    for bad in [["0.3", a, "0.7"], ["0.3", a, b, "0.7"], [a, "0.5"], ["-1", a, "2", b], []]:
        with pytest.raises(ValueError, match="--data-path"):
            parse_data_path(bad)


def test_blended_samples_come_from_the_weighted_datasets(tmp_path):
    a, _ = make_data(tmp_path / "a", n_docs=30, lo=0)          # tokens < 100000
    b, _ = make_data(tmp_path / "b", n_docs=30, lo=100000)     # tokens >= 100000
    tr, va, te = build_gpt_datasets(["0.25", a, "0.75", b], "90,10,0", 4, 5, (400, 40, 0),
                                    EOD, cache_dir=str(tmp_path / "c"))
    assert te is None and len(tr) == 400 and len(va) == 40
    src = []
    for i in range(len(tr)):
        t = [x for x in tr[i]["tokens"].tolist() + [tr[i]["labels"][-1].item()] if x != EOD]
        assert t, "sample made only of EOD tokens"
        kinds = {x >= 100000 for x in t}
        assert len(kinds) == 1, "a sample mixes two datasets"
        src.append(kinds.pop())
        assert int(tr.schedule[i]) == int(src[-1])
    assert sum(src) == 300  # exactly 75% from b
    # each underlying dataset was built with exactly the samples the blend draws
    assert len(tr.datasets[0]) == 100 and len(tr.datasets[1]) == 300
