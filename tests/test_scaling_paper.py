"""The RSA paper's setting in the scaling tool: refusals, the unfused memory terms, the report.

Cheap by design: one real trial (the unfused path measured against the model); the paper
experiment's orchestration and report run on a fake ``run_experiment``.
"""
import os
import sys

import pytest

from megatron_sp import memory as mm
from megatron_sp.scaling import paper

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import scaling_experiment as se  # noqa: E402

MiB = 2 ** 20
BASE = paper.PAPER_PRESETS["bert-base-like"]


def _args(*extra):
    return se.parse_args(["--memory-budget-gb", "0.0625", "--device", "cpu", *extra])


# --- refusals --------------------------------------------------------------------------
@pytest.mark.parametrize("model,layout,world,needle", [
    ("bert-base-like", "tp", 8, "--num-attention-heads 12 is not divisible by --tensor-model-parallel-size 8"),
    ("bert-large-like", "tp", 32, "--tensor-model-parallel-size 32 exceeds --num-attention-heads 16"),
    ("bert-base-like", "a2a", 8, "not divisible by the Ulysses degree 8"),
])
def test_layouts_the_model_cannot_run_are_refused_with_pretrain_gpts_error(model, layout, world, needle):
    assert needle in se.layout_refusal(_args("--model", model), se.make_layout(layout, world))
    assert se.layout_refusal(_args("--model", model), se.make_layout("rsa", world)) == ""


def test_flash_is_refused_for_rsa_and_unfused_is_not():
    lay = se.make_layout("rsa", 4)
    assert "cannot apply to --cp-comm-type rsa" in se.layout_refusal(_args("--attention-backend", "flash"), lay)
    assert se.layout_refusal(_args("--attention-backend", "unfused"), lay) == ""


def test_a_refused_cell_is_marked_and_runs_no_trial(tmp_path):
    args = _args("--model", "bert-base-like", "--worlds", "8", "--layouts", "tp", "--experiment", "max-batch",
                 "--out-dir", str(tmp_path), "--name", "refused")
    rows = se.run_experiment(args)
    assert rows[0]["error"].startswith("refused: --num-attention-heads 12") and rows[0]["trials"] == 0
    md = (tmp_path / "refused.md").read_text()
    assert "| 8 | refused |" in md and "Refused (pretrain_gpt.py's start-up error)" in md


# --- the model's unfused terms ---------------------------------------------------------
def test_unfused_keeps_probabilities_for_every_layout_where_attention_is_a_ring_of_one():
    flash = mm.ModelSpec.from_flags(BASE.split())
    unfused = mm.ModelSpec.from_flags(BASE.split() + ["--attention-backend", "unfused"])
    a, L, n, b = 12, 12, 256, 2

    def extra(lay, seq=n):
        return (mm.estimate(unfused, lay, seq, b).activations - mm.estimate(flash, lay, seq, b).activations) / L

    lse = lambda lay: b * n / lay.cp * a / lay.tp * 4  # noqa: E731  (the flash path's LSE, not kept)
    for lay in (mm.ParallelConfig(), mm.ParallelConfig(tp=4), mm.ParallelConfig(tp=2, sp=True)):  # P = 1: [b, a/T, N, N]
        assert extra(lay) == pytest.approx(b * a / lay.tp * n * n * 4 - lse(lay))
    u = mm.ParallelConfig(cp=4, mode="a2a", ulysses=4)  # Ulysses: a/U heads over the whole sequence; the flash
    out_copy = b * n / 4 * a * flash.kv_channels * 4  # path's second output copy (_ulysses_output) is not kept
    assert extra(u) == pytest.approx(b * a / 4 * n * n * 4 - lse(u) - out_copy)
    ring = mm.ParallelConfig(cp=4, mode="p2p")  # inside a ring: block scores are transient, nothing kept
    assert extra(ring) == 0
    block = b * a * (4 * n / 4) ** 2 * 4  # the diagonal block [s, s] of a ring step at 4 x the length
    assert mm.unfused_transient(unfused, ring, n, b) == pytest.approx(4 * block)
    assert mm.estimate(unfused, ring, 4 * n, b).transient > mm.estimate(flash, ring, 4 * n, b).transient
    rsa = mm.ParallelConfig(cp=4, mode="rsa")  # RSA keeps its rows whatever the backend
    assert mm.estimate(unfused, rsa, n, b).step_peak == mm.estimate(flash, rsa, n, b).step_peak
    # TP and RSA at equal degree keep the same score bytes: b a N^2 / P
    assert mm.probs_bytes(unfused, mm.ParallelConfig(tp=4), n, b) == mm.probs_bytes(unfused, rsa, n / 4, b)


def test_unfused_step_is_within_ten_percent_of_the_model():
    args = _args("--model", "bert-base-like", "--attention-backend", "unfused")
    layout = se.make_layout("tp", 1)
    r = se.run_trial(se.build_argv(args, layout, 256, 1), 1, 1 << 30, steps=2, timeout=120)
    assert r.status == "ok", r.error
    model = mm.estimate(se.model_config(args), layout.parallel, 256, 1).step_peak
    probs = 12 * 256 * 256 * 4 * 12
    assert r.peak_bytes > probs  # the probabilities of every layer were kept
    assert abs(model / r.peak_bytes - 1) < 0.1, (model / MiB, r.peak_bytes / MiB)


def test_model_counts_the_cpu_pages_of_a_bert_large_like_step():
    """BERT-Large-like at the paper's budget: exact tensor bytes leave ~1.5 MiB (24 layers x ~15
    tensors x a page) between the model and the measured RSS; with the CPU pages the model is
    within 0.75 MiB (1.2%) of it, which is what makes the max micro-batch cells exact."""
    args = _args("--model", "bert-large-like", "--attention-backend", "unfused")
    layout = se.make_layout("tp", 1)
    r = se.run_trial(se.build_argv(args, layout, 64, 3), 1, 1 << 30, steps=2, timeout=120)
    assert r.status == "ok", r.error
    model = mm.estimate(se.model_config(args), layout.parallel, 64, 3).step_peak
    assert abs(model - r.peak_bytes) < 0.75 * MiB, (model / MiB, r.peak_bytes / MiB)


def test_paper_search_steps_by_one_granule_from_the_model():
    assert _args("--experiment", "paper").bracket == "granule"
    assert _args("--experiment", "paper", "--growth", "1.1").bracket == "growth"
    assert _args().bracket == "growth"
    with pytest.raises(SystemExit):
        _args("--experiment", "paper", "--growth", "1.1", "--bracket", "granule")


# --- extrapolation and the report ------------------------------------------------------
def test_tp_stops_at_the_head_count_and_the_model_extrapolates_to_64_devices():
    assert [paper.tp_ceiling(12, w) for w in (1, 2, 4, 8, 16, 64)] == [1, 2, 4, 6, 12, 12]
    rows = paper.extrapolation("bert-base-like", "max-batch", 64 * MiB, 64, 4)
    by = {r["devices"]: r for r in rows}
    assert by[8]["tp"] is None and by[64]["tp"] is None and by[4]["tp"] == by[4]["tp_ceiling"]
    assert by[64]["tp_ceiling"] == by[16]["tp_ceiling"]  # TP cannot use more devices than heads
    assert by[64]["rsa"] >= 7 * by[8]["rsa"]  # RSA's batch grows ~linearly with devices
    assert by[64]["rsa"] / by[64]["tp_ceiling"] > 10  # the paper's 13.7x regime
    seq = {r["devices"]: r for r in paper.extrapolation("bert-base-like", "max-seq", 64 * MiB, 64, 4)}
    assert 2 < seq[64]["rsa"] / seq[64]["tp_ceiling"] < 5  # the paper's 3.0x regime: quadratic scores


def _fake_run(args):
    rows = []
    for w in args.worlds:
        for l in args.layouts:
            refused = l == "tp" and w == 8 and args.model == "bert-base-like"
            value = 0 if refused else 10 * w * (2 if l == "rsa" else 1)
            rows.append(dict(world=w, layout=l, max_value=value, model_max_value=value + 1,
                             model_vs_measured=round((value + 1) / value, 3) if value else "", cpu_s=1.0,
                             error="refused: --num-attention-heads 12 is not divisible by "
                                   "--tensor-model-parallel-size 8" if refused else ""))
    _fake_run.calls.append((args.model, args.experiment, tuple(args.layouts), args.attention_backend, args.name))
    return rows


def test_paper_experiment_runs_both_settings_and_writes_the_tables(tmp_path):
    _fake_run.calls = []
    args = se.parse_args(["--experiment", "paper", "--memory-budget-gb", "0.0625", "--device", "cpu",
                          "--worlds", "1", "2", "4", "8", "--out-dir", str(tmp_path)])
    assert (args.seq_length, args.micro_batch_size, args.name) == (64, 4, "paper_rsa_vs_tp")
    assert paper.run_paper(args, _fake_run) == 0
    assert ("bert-base-like", "max-batch", ("tp", "rsa"), "unfused", "bert-base-like_max-batch_paper") \
        in _fake_run.calls
    assert ("bert-large-like", "max-seq", ("p2p", "a2a", "a2a+p2p"), "auto", "bert-large-like_max-seq_flash") \
        in _fake_run.calls and len(_fake_run.calls) == 8
    md = (tmp_path / "paper_rsa_vs_tp.md").read_text()
    assert "## bert-base-like: max micro-batch (sequence 64)" in md
    assert "| 4 | **40** (41) | **80** (81) | 2.00x |" in md  # measured (model), RSA / TP
    assert "| 8 | refused: heads % TP |" in md and "*64, model*" in md
    assert "| bert-large-like | max sequence length | 2.00x | 2.00x |" in md and "13.7x" in md
    assert (tmp_path / "paper_rsa_vs_tp_bert-base-like.png").stat().st_size > 0
