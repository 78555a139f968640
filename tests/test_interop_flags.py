"""Megatron-LM flags: the three-way rule on real scripts' flag lists, deprecated spellings, and the
flags with Megatron's meaning (learning-rate schedule, checkpoint arguments, data, logging).

Every flag of a real script is exactly one of: honoured (no note, no error), accepted with one
start-up note naming it, or refused with one line naming it.
"""
import json
import os

import pytest
import torch

from interop_common import flatten, groups, script_flags
from megatron_sp.arguments import megatron_compat as mc
from megatron_sp.arguments import build_parser, validate_args
from megatron_sp.training.lr_scheduler import LRScheduler, SchedulerMismatchError
from megatron_sp.arguments.model_config import gpt_config
from megatron_sp.training.loop import pretrain

TINY = ("--mock-data --vocab-size 128 --num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 32 "
        "--micro-batch-size 1 --global-batch-size 4 --lr 1e-3 --hidden-dropout 0 --attention-dropout 0 "
        "--log-interval 1 --eval-interval 0").split()


def _validate(words, world=1):
    return validate_args(build_parser().parse_args(words), world)


def _note_flags(args) -> set:
    return {n.split()[0].rstrip(":") for n in args.startup_notes}


def classify(words, world):
    """``(refused, noted, honoured)`` flag sets of a flag list, as a run would treat them."""
    gs = groups(words)
    refused = []
    while True:
        try:
            args = _validate(flatten([g for g in gs if g[0] not in refused]), world)
            break
        except ValueError as exc:
            flag = next((f for f, _ in gs if str(exc).startswith(f + " ") or str(exc).startswith(f + ":")), None)
            assert flag is not None and flag not in refused, f"error names no flag of the script: {exc}"
            assert "\n" not in str(exc)
            refused.append(flag)
    flags = {f for f, _ in gs}
    noted = _note_flags(args) & flags
    return set(refused), noted, flags - set(refused) - noted


@pytest.fixture
def ds_config(tmp_path):
    path = tmp_path / "deepspeed.json"  # what the script writes
    path.write_text(json.dumps({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "steps_per_print": 1,
                                "zero_optimization": {"stage": 0}, "bf16": {"enabled": True}}))
    return str(path)


NOTED_LLAMA = {"--use-mcore-models", "--grad-reduce-in-bf16", "--manual-gc", "--empty-unused-memory-level",
               "--profile", "--profile-step-start", "--profile-step-end", "--no-mmap-bin-files"}


@pytest.mark.parametrize("script,world,refused,noted", [
    ("gpt3_175b", 128, set(), {"--rampup-batch-size"}),
    ("llama3_8b_fp8_mock", 1, {"--fp8-format", "--fp8-amax-history-len", "--fp8-amax-compute-algo",
                               "--fp8-param-gather"}, NOTED_LLAMA | {"--tiktoken-pattern"}),
    ("llama3_8b_fp8_real", 1, {"--fp8-format", "--fp8-amax-history-len", "--fp8-amax-compute-algo",
                               "--fp8-param-gather"}, NOTED_LLAMA | {"--vocab-size"}),
    ("deepspeed_llama2", 4, {"--distributed-backend"},
     {"--deepspeed", "--use-rotary-position-embeddings", "--num-key-value-heads"}),
])
def test_real_scripts_flags_follow_the_three_way_rule(script, world, refused, noted, ds_config):
    words = script_flags(script, {"DS_CONFIG": ds_config})
    got_refused, got_noted, honoured = classify(words, world)
    if torch.cuda.is_available():
        refused = refused - {"--distributed-backend"}
    assert got_refused == refused
    assert got_noted == noted
    assert "--lr" in honoured


def _dummy(spec) -> list:
    if spec.get("action") in ("store_true", "store_false"):
        return []
    nargs = spec.get("nargs")
    value = {int: "2", float: "0.5"}.get(spec.get("type"), "x")
    return [value] * (nargs if isinstance(nargs, int) else 1)


def test_every_table_entry_notes_or_refuses_in_one_line():
    parser_flags = set(build_parser()._option_string_actions)
    for flag, (spec, _) in mc.NO_EFFECT.items():
        args = _validate(TINY + ["--train-iters", "1", flag, *_dummy(spec)])
        assert flag in _note_flags(args), flag
    for flag, (spec, reason, _) in mc.REFUSED.items():
        if flag not in parser_flags:
            continue
        with pytest.raises(ValueError) as e:
            _validate(TINY + ["--train-iters", "1", flag, *_dummy(spec)])
        assert str(e.value).startswith(flag) and reason in str(e.value) and "\n" not in str(e.value)
    for flag, reason in (("--moe-router-topk", "mixture of experts"), ("--fp8-margin", "fp8"),
                         ("--no-such-flag", "unrecognized flag --no-such-flag")):
        with pytest.raises(ValueError, match=reason):
            _validate(TINY + ["--train-iters", "1", flag, "2"])


@pytest.mark.parametrize("old,new", [
    ("--use-rotary-position-embeddings", "--position-embedding-type rope"),
    ("--use-rotary-position-embeddings --no-position-embedding", "--position-embedding-type rope"),
    ("--normalization rmsnorm", "--normalization RMSNorm"),
    ("--num-key-value-heads 2", "--group-query-attention --num-query-groups 2"),
    ("--checkpoint-activations", "--recompute-granularity full --recompute-method uniform"),
    ("--checkpoint-activations --checkpoint-num-layers 2",
     "--recompute-granularity full --recompute-method uniform --recompute-num-layers 2"),
    ("--layernorm-epsilon 1e-6", "--norm-epsilon 1e-6"),
    ("--rotary-position-embeddings-theta 500000 --use-rotary-position-embeddings",
     "--rotary-base 500000 --position-embedding-type rope"),
    ("--ds-sequence-parallel-size 2", "--context-parallel-size 2 --cp-comm-type a2a"),
])
def test_deprecated_spellings_build_exactly_the_modern_model(old, new):
    a, b = (_validate(TINY + ["--train-iters", "1"] + s.split(), 2) for s in (old, new))
    assert gpt_config(a, 128) == gpt_config(b, 128)
    for key in ("context_parallel_size", "cp_comm_type", "hierarchical_context_parallel_sizes"):
        assert getattr(a, key) == getattr(b, key)
    assert not b.startup_notes
    assert bool(a.startup_notes) == (old.split()[0] != "--normalization")  # an old flag is said; a value spelling
    # (Megatron-DeepSpeed's lower case) is just accepted


def test_deprecated_spelling_trains_the_same_losses():
    base = TINY + ["--train-iters", "2", "--swiglu", "--disable-bias-linear"]
    old = pretrain(base + "--use-rotary-position-embeddings --normalization rmsnorm --num-key-value-heads 2".split())
    new = pretrain(base + "--position-embedding-type rope --normalization RMSNorm --group-query-attention "
                          "--num-query-groups 2".split())
    assert old == new


def test_bad_flags_stop_with_one_line(capsys):
    import pretrain_gpt
    cases = [("--moe-router-topk 2", "--moe-router-topk: mixture of experts is not supported"),
             ("--pipeline-model-parallel-size 2", "not divisible by --tensor-model-parallel-size 1 x "
                                                 "--context-parallel-size 1 x --pipeline-model-parallel-size 2"),
             ("--no-position-embedding", "--position-embedding-type rope"),
             ("--normalization BatchNorm", "choose LayerNorm or RMSNorm"),
             ("--lr-warmup-samples 8", "--lr-warmup-samples 8 goes with --train-samples"),
             ("--frobnicate", "unrecognized flag --frobnicate")]
    if not torch.cuda.is_available():
        cases.append(("--distributed-backend nccl", "--distributed-backend nccl needs CUDA"))
    for flags, needle in cases:
        assert pretrain_gpt.main(TINY + ["--train-iters", "1"] + flags.split()) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (flags, err)


# --- learning rate ------------------------------------------------------------------------------
def _scheduler(argv, model=None):
    from megatron_sp.model import GPTModel
    from megatron_sp.parallel_state import single_rank_mesh
    from megatron_sp.tensor_parallel import RNGTracker
    from megatron_sp.training.lr_scheduler import build_scheduler
    from megatron_sp.training.optimizer import MixedPrecisionOptimizer
    args = _validate(TINY + argv)
    model = model or GPTModel(gpt_config(args, 128), single_rank_mesh(), RNGTracker(1))
    opt = MixedPrecisionOptimizer(model, args, single_rank_mesh())
    return build_scheduler(opt, args), opt


def test_sample_based_schedule_and_decoupled_lr():
    # G = 4: warmup 10 samples = 2.5 iterations, decay to sample 40 = iteration 10 (Megatron counts samples)
    s, opt = _scheduler("--train-samples 40 --lr-warmup-samples 10 --lr-decay-style linear --min-lr 1e-4 "
                        "--lr-warmup-init 1e-5 --decoupled-lr 5e-3 --decoupled-min-lr 5e-4".split())
    assert s.warmup_steps == 10 and s.decay_steps == 40
    assert s.get_lr(2) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 8 / 10)
    assert s.get_lr(6) == pytest.approx(1e-4 + (1e-3 - 1e-4) * (1 - 14 / 30))
    s.step(6)
    lrs = {bool(g.get("max_lr")): g["lr"] for g in opt.param_groups}
    decoupled = [g for g in opt.param_groups if "max_lr" in g]
    assert len(decoupled) == 1 and {id(p) for p in decoupled[0]["params"]} == {
        id(p) for p in opt.model.parameters() if getattr(p, "is_embedding_or_output_parameter", False)}
    assert lrs[True] == pytest.approx(5e-4 + (5e-3 - 5e-4) * (1 - 14 / 30))
    assert lrs[False] == pytest.approx(s.get_lr(6))
    # iteration-based: --lr-warmup-fraction of the decay samples, as Megatron
    s, _ = _scheduler("--train-iters 20 --lr-decay-iters 10 --lr-warmup-fraction 0.25".split())
    assert s.decay_steps == 40 and s.warmup_steps == 10


def test_checkpoint_schedule_is_checked_overridden_or_kept():
    s, _ = _scheduler("--train-iters 10".split())
    s.step(3)
    saved = s.state_dict()
    other, _ = _scheduler("--train-iters 10 --lr 2e-3".split())
    with pytest.raises(SchedulerMismatchError, match="max_lr 0.001 but the flags give 0.002 .*--override-opt_param"):
        other.load_state_dict(saved)
    over, _ = _scheduler("--train-iters 10 --lr 2e-3 --override-opt_param-scheduler".split())
    over.load_state_dict(saved)
    assert over.num_steps == 3 and over.max_lr == 2e-3
    kept, _ = _scheduler("--train-iters 10 --lr 2e-3 --use-checkpoint-opt-param-scheduler".split())
    kept.load_state_dict(saved)
    assert kept.max_lr == 1e-3 and kept.get_lr(3) == s.get_lr(3)
    legacy = {"num_steps": 2, "max_lr": 1e-3, "min_lr": 0.0, "warmup_iters": 0, "decay_iters": 10,
              "decay_style": "linear"}  # written before the schedule counted samples
    fresh, _ = _scheduler("--train-iters 10".split())
    fresh.load_state_dict(legacy)
    assert fresh.num_steps == 2
    assert isinstance(LRScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), 1, 0, 0, 4,
                                  "inverse-square-root").get_lr(4), float)


# --- checkpoint arguments -------------------------------------------------------------------------
def test_use_checkpoint_args_and_exit_on_missing_checkpoint(tmp_path):
    save = str(tmp_path / "ck")
    pretrain(TINY + "--train-iters 1 --position-embedding-type rope --swiglu --normalization RMSNorm "
                    "--apply-layernorm-1p".split() + ["--save", save])
    argv = ["--mock-data", "--micro-batch-size", "1", "--lr", "1e-3", "--train-iters", "2", "--eval-interval", "0",
            "--load", save, "--use-checkpoint-args", "--finetune", "--seq-length", "64",
            "--override-opt_param-scheduler"]
    args = _validate(argv)
    assert (args.num_layers, args.hidden_size, args.num_attention_heads, args.seq_length) == (2, 32, 4, 64)
    assert args.swiglu and args.apply_layernorm_1p and args.normalization == "RMSNorm" and args.vocab_size == 128
    assert any(n.startswith("--use-checkpoint-args: from") for n in args.startup_notes)
    assert args.rotary_base == 10000 and _validate(argv + ["--rotary-base", "40000"]).rotary_base == 40000
    losses = pretrain(argv)  # the 2-layer RoPE model at sequence 64, from the checkpoint's weights
    assert len(losses) == 2
    with pytest.raises(ValueError, match="--num-layers is required"):
        _validate(argv[:-5])
    empty = str(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"--load .*empty holds no checkpoint .*--exit-on-missing-checkpoint"):
        _validate(TINY + ["--train-iters", "1", "--load", empty, "--exit-on-missing-checkpoint"])


# --- data -------------------------------------------------------------------------------------------
def test_mock_data_split_cache_and_workers(tmp_path):
    from megatron_sp.training.batches import build_datasets, build_tokenizer
    cache = str(tmp_path / "cache")
    argv = TINY + ["--train-iters", "3", "--split", "'99,1,0'", "--data-cache-path", cache, "--eval-interval", "2",
                   "--eval-iters", "1"]
    args = _validate(argv)
    train, valid, test = build_datasets(args, build_tokenizer(args))
    assert train is not None and valid is not None and test is None  # weight 0: no test split, as Megatron
    assert any(n.endswith(".npy") for n in os.listdir(cache))  # the mock index is cached like real data's
    again = build_datasets(args, build_tokenizer(args))[0]
    assert all(torch.equal(train[i]["tokens"], again[i]["tokens"]) for i in range(6))
    assert pretrain(argv + ["--num-workers", "2"]) == pretrain(argv)  # DataLoader workers: same samples
    masked = _validate(TINY + ["--train-iters", "1", "--eod-mask-loss"])
    ds = build_datasets(masked, build_tokenizer(masked))[0]
    assert any((ds[i]["tokens"] == 127).any() and ds[i]["loss_mask"][ds[i]["tokens"] == 127].sum() == 0
               for i in range(4))  # mock documents end with EOD (V - 1), masked by --eod-mask-loss


def test_logging_switches(capsys):
    pretrain(TINY + ["--train-iters", "1", "--log-params-norm", "--log-num-zeros-in-grad"])
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(" iteration")][0]
    assert "| num zeros: " in line and "| params norm: " in line
    from megatron_sp.training.logging import MetricsWriter

    class Recorder:
        def __init__(self):
            self.names = []

        def add_scalar(self, name, value, step):
            self.names.append(name)

    args = _validate(TINY + ["--train-iters", "1", "--no-log-learnig-rate-to-tensorboard",
                             "--no-log-loss-scale-to-tensorboard"])
    w = MetricsWriter(args, False)
    w.tb = Recorder()
    w.scalars(1, {"lm loss": 1.0, "learning-rate": 1e-3, "loss-scale": 1.0, "validation lm loss PPL": 2.0})
    assert w.tb.names == ["lm loss"]  # PPL only with --log-validation-ppl-to-tensorboard, as Megatron
