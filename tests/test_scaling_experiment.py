"""tools/scaling_experiment.py: layouts, the search, the CPU peak-memory meter, trials, outputs."""
import csv
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import scaling_experiment as se  # noqa: E402

MiB = 2 ** 20
# one layer, hidden 32: a trial takes about a second
MICRO = "--num-layers 1 --hidden-size 32 --num-attention-heads 4 --ffn-hidden-size 64 --vocab-size 200"


# --- layouts ---------------------------------------------------------------------------
def test_layouts_and_granularity():
    assert se.make_layout("tp", 4) == se.Layout("tp", 4, 1, 1, "p2p", False)
    assert se.make_layout("tp+sp", 4).sp
    l = se.make_layout("a2a+p2p", 8)
    assert (l.cp, l.ulysses, l.ring) == (8, 2, 4)
    assert "--hierarchical-context-parallel-sizes" in l.flags()
    assert se.make_layout("a2a", 4).ulysses == 4
    mix = se.make_layout("tp2+sp+p2p", 8)
    assert (mix.tp, mix.cp, mix.sp, mix.mode) == (2, 4, True, "p2p")
    assert se.make_layout("tp2+p2p", 2) is None  # nothing left for CP
    assert se.make_layout("p2p", 4).seq_granularity() == 8  # zigzag: 2P
    assert se.make_layout("rsa", 4).seq_granularity() == 4
    assert se.make_layout("tp2+sp+p2p", 8).seq_granularity() == 16
    assert se.make_layout("tp", 1).key() == se.make_layout("a2a", 1).key()  # one program at world 1
    with pytest.raises(ValueError, match="unknown layout"):
        se.make_layout("ring", 2)
    state = se.make_layout("tp2+sp+p2p+distopt+offload", 8)
    assert (state.tp, state.cp, state.sharding, state.offload) == (2, 4, "dist-opt", True)
    assert {"--use-distributed-optimizer", "--optimizer-cpu-offload", "--sequence-parallel"} <= set(state.flags())
    assert se.make_layout("dp+fsdp2", 4).flags()[-1] == "--use-torch-fsdp2"
    assert se.make_layout("p2p+fsdp2", 2).key() != se.make_layout("p2p", 2).key()
    with pytest.raises(ValueError, match="offload needs"):
        se.make_layout("p2p+offload", 2)


# --- the search with a fake trial ------------------------------------------------------
class Fake:
    def __init__(self, threshold):
        self.threshold, self.calls = threshold, []

    def __call__(self, v):
        self.calls.append(v)
        return se.TrialResult("ok" if v <= self.threshold else "over", value=v)


@pytest.mark.parametrize("threshold,g,start", [(1000, 8, 64), (1000, 8, 4000), (777, 2, 700), (5, 1, 1),
                                               (64, 16, 64), (100000, 4, 3)])
@pytest.mark.parametrize("step", [False, True])
def test_search_finds_the_largest_fitting_multiple(threshold, g, start, step):
    fake = Fake(threshold)
    r = se.search_max(fake, g, start, limit=1 << 20, rel_tol=0.0, step=g if step else None)
    assert r.value == threshold // g * g
    assert r.result.value == r.value and len(r.trials) == len(fake.calls) == len(set(fake.calls))
    assert all(v % g == 0 for v in fake.calls)


@pytest.mark.parametrize("start", [1232, 1248])
def test_granule_bracket_settles_a_start_within_one_granule_in_two_trials(start):
    """--bracket granule (the paper's): from the model's start, the answer and the next granule."""
    fake = Fake(1240)
    r = se.search_max(fake, 16, start, limit=1 << 20, rel_tol=0.03, step=16)
    assert r.value == 1232 and sorted(fake.calls) == [1232, 1248]


def test_search_tolerance_limit_and_nothing_fits():
    fake = Fake(10_000)
    r = se.search_max(fake, 2, 9000, limit=1 << 20, rel_tol=0.05, growth=1.15)
    assert 0.95 * 10_000 <= r.value <= 10_000 and len(fake.calls) <= 6
    assert se.search_max(Fake(10_000), 2, 100, limit=500).value == 500  # capped by the limit
    r = se.search_max(Fake(3), 8, 64, limit=1024)
    assert r.value == 0 and r.result is None


# --- CPU peak memory measure -----------------------------------------------------------
def _measure(kind, out):
    se.configure_malloc()
    import torch
    meter = se.PeakMeter(torch.device("cpu"))
    big = None
    torch.ones(1024).sum()  # first-op initialisation belongs to the baseline, as the trial's warm-up step
    meter.start()
    if kind == "one":
        big = torch.ones(64 * MiB // 4)  # 64 MiB, touched
    elif kind == "many":
        big = [torch.ones(256 * 1024 // 4) for _ in range(128)]  # 128 x 256 KiB = 32 MiB
    elif kind == "freed":
        for _ in range(8):
            torch.ones(16 * MiB // 4)  # 16 MiB alive at a time, 128 MiB allocated in total
    peak = meter.peak()
    del big
    out.put(peak)


@pytest.mark.parametrize("kind,expected", [("one", 64 * MiB), ("many", 32 * MiB), ("freed", 16 * MiB)])
def test_peak_meter_measures_known_allocations(kind, expected):
    ctx = se._mp_context("cpu")  # a clean forkserver child: the parent's heap and threads do not leak in
    q = ctx.Queue()
    p = ctx.Process(target=_measure, args=(kind, q))
    p.start()
    peak = q.get(timeout=60)
    p.join()
    assert abs(peak - expected) < 0.05 * expected + 1 * MiB, (kind, peak / MiB)


# --- real trials -----------------------------------------------------------------------
def _args(*extra):
    return se.parse_args(["--memory-budget-gb", "0.02", "--device", "cpu", "--model-args", MICRO, *extra])


def test_trial_fits_over_and_error_are_outcomes_not_exceptions():
    args = _args()
    ok = se.run_trial(se.build_argv(args, se.make_layout("p2p", 2), 512, 1), 2, 64 * MiB, timeout=120)
    assert ok.status == "ok" and 0 < ok.peak_bytes < 64 * MiB and ok.tokens_per_s > 0 and ok.tflops_per_device > 0
    over = se.run_trial(se.build_argv(args, se.make_layout("tp", 1), 512, 1), 1, 64 * 1024, timeout=120)
    assert over.status == "over" and over.peak_bytes > 64 * 1024
    bad = se.run_trial(se.build_argv(args, se.make_layout("p2p", 2), 510, 1), 2, 64 * MiB, timeout=120)
    assert bad.status == "error" and "--seq-length 510" in bad.error


def test_a_session_measures_each_shape_as_fresh_ranks_and_restarts_after_a_failure():
    """The trials of a search share their ranks (TrialSession): a second shape measures what fresh
    ranks measure; another program runs in fresh ranks; a failed trial ends the ranks and the
    next trial starts new ones."""
    args = _args()
    layout = se.make_layout("p2p", 2)
    fresh = {n: se.run_trial(se.build_argv(args, layout, n, 1), 2, 64 * MiB, timeout=120) for n in (1024, 512)}
    with se.TrialSession(2, 64 * MiB, timeout=120) as session:
        first = session.run(se.build_argv(args, layout, 1024, 1))
        procs = list(session.procs)
        second = session.run(se.build_argv(args, layout, 512, 1))
        assert session.procs == procs  # the same ranks
        for n, r in ((1024, first), (512, second)):
            assert r.status == "ok" and abs(r.peak_bytes - fresh[n].peak_bytes) < 0.05 * fresh[n].peak_bytes + MiB, \
                (n, r.peak_bytes / MiB, fresh[n].peak_bytes / MiB)
        other = session.run(se.build_argv(_args("--model-args", MICRO + " --num-layers 3"), layout, 512, 1))
        assert other.status == "ok" and session.procs != procs  # another model: fresh ranks
        procs = list(session.procs)
        bad = session.run(se.build_argv(args, layout, 510, 1))
        assert bad.status == "error" and "--seq-length 510" in bad.error and not session.procs
        again = session.run(se.build_argv(args, layout, 512, 1))
        assert again.status == "ok" and abs(again.peak_bytes - fresh[512].peak_bytes) < 0.05 * fresh[512].peak_bytes + MiB


def test_over_budget_step_fails_with_oom_under_the_guard():
    # the RLIMIT_DATA guard is baseline + 2 x budget + 512 MiB: 20 MiB budget, ~2.5 GiB step
    args = _args()
    r = se.run_trial(se.build_argv(args, se.make_layout("rsa", 2), 16384, 1), 2, 20 * MiB, timeout=120)
    assert r.status == "oom", (r.status, r.error)


def test_tool_end_to_end_writes_tables_and_plots(tmp_path):
    out = tmp_path / "scaling"
    rc = se.main(["--experiment", "max-seq", "--worlds", "1", "2", "--layouts", "tp", "p2p", "rsa",
                  "--memory-budget-gb", "0.008", "--model-args", MICRO, "--rel-tol", "0.15",
                  "--out-dir", str(out), "--name", "smoke", "--device", "cpu"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "smoke.csv")))
    assert {(r["world"], r["layout"]) for r in rows} == {("1", "tp"), ("1", "p2p"), ("1", "rsa"), ("2", "tp"),
                                                          ("2", "p2p"), ("2", "rsa")}
    value = {(r["world"], r["layout"]): int(r["max_value"]) for r in rows}
    assert value[("2", "p2p")] > 1.6 * value[("1", "p2p")]
    assert value[("2", "rsa")] < value[("2", "p2p")]
    for r in rows:
        assert r["model_max_value"] and abs(float(r["model_vs_measured"]) - 1) < 0.35
    md = (out / "smoke.md").read_text()
    assert "| world | tp | p2p | rsa |" in md and "Memory model vs measurement" in md
    assert (out / "smoke_vs_devices.png").stat().st_size > 0
    assert (out / "smoke_throughput_vs_length.png").stat().st_size > 0
