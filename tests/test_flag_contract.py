"""The one flag contract: the memory model, the model config and the layout all read the real
parser's namespace, by field name; one pre-flight answers "would this command run"."""
import dataclasses

import pytest

from megatron_sp import memory as mm
from megatron_sp.arguments.model_config import gpt_config
from megatron_sp.arguments.parallel import ParallelConfig
from megatron_sp.arguments.preflight import parse_model_flags, preflight, refusal
from megatron_sp.model import GPTConfig
from megatron_sp.scaling.presets import MODEL_PRESETS

RUN = ("--micro-batch-size 1 --lr 1e-3 --train-iters 1 --mock-data --tokenizer-type NullTokenizer "
       "--vocab-size 128 --seq-length 64")


@pytest.mark.parametrize("preset", sorted(MODEL_PRESETS))
def test_every_preset_spec_is_the_parsed_model(preset):
    """The memory model's spec of a preset equals, field by field, the GPTConfig the real parser
    gives for the same flags; ModelSpec declares no field of its own beyond precision and device."""
    argv = MODEL_PRESETS[preset].split() + ["--bf16"]
    spec = mm.ModelSpec.from_flags(argv)
    cfg = gpt_config(parse_model_flags(argv), spec.vocab_size)
    own = {f.name for f in dataclasses.fields(mm.ModelSpec)} - {f.name for f in dataclasses.fields(GPTConfig)}
    assert own == {"bf16", "device"}, own
    for f in dataclasses.fields(mm.ModelSpec):
        if f.name not in own:
            assert getattr(spec, f.name) == getattr(cfg, f.name), (preset, f.name)
    assert spec.bf16 and spec.hidden_dropout == 0.1 and spec.attention_dropout == 0.1  # the parser's defaults


def test_a_flag_reaches_the_model_and_the_memory_model_by_name():
    argv = (RUN + " --num-layers 2 --hidden-size 64 --num-attention-heads 4 --tiled-mlp-chunk-size 16 "
            "--cross-entropy-chunk-size 32 --recompute-granularity selective --hidden-dropout 0 "
            "--attention-dropout 0.2 --disable-bias-linear --cpu-offloading-num-layers 1").split()
    with pytest.raises(ValueError, match="--cpu-offloading-num-layers 1 does nothing without --cpu-offloading"):
        preflight(argv, 1)
    pre = preflight(argv + ["--cpu-offloading"], 1)
    spec = mm.ModelSpec.from_args(pre.args)
    for name in ("tiled_mlp_chunk_size", "cross_entropy_chunk_size", "recompute_granularity", "hidden_dropout",
                 "attention_dropout", "add_bias_linear", "cpu_offloading_num_layers"):
        assert getattr(spec, name) == getattr(pre.model, name), name
    assert (spec.tiled_mlp_chunk_size, spec.attention_dropout, spec.add_bias_linear,
            spec.cpu_offloading_num_layers) == (16, 0.2, False, 1)


def test_parallel_config_is_derived_once_from_the_flags():
    """The docstring's worked example, and the memory model's layout is the same object."""
    argv = (RUN + " --num-layers 2 --hidden-size 64 --num-attention-heads 8 --tensor-model-parallel-size 2 "
            "--sequence-parallel --context-parallel-size 4 --cp-comm-type a2a+p2p "
            "--hierarchical-context-parallel-sizes 2 2 --use-torch-fsdp2").split()
    pc = preflight(argv, 16).parallel
    assert (pc.tp, pc.cp, pc.dp, pc.pp, pc.ulysses_degree, pc.ring) == (2, 4, 2, 1, 2, 2)
    assert pc.zigzag and pc.seq_divisor == 16 and pc.sharding == "fsdp2" and pc.sharded and not pc.pipelined
    assert mm.ParallelConfig is ParallelConfig
    again = preflight(RUN.split() + ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "8"]
                      + pc.flags(), 16).parallel
    assert again == pc
    assert ParallelConfig(cp=4, mode="a2a").ulysses_degree == 4 and ParallelConfig(cp=4, mode="rsa").score_rows
    with pytest.raises(ValueError, match="unknown sharding mode 'none'"):
        ParallelConfig(sharding="none")


def test_preflight_refuses_in_one_line_what_pretrain_refuses():
    import pretrain_gpt
    model = " --num-layers 2 --hidden-size 64 --num-attention-heads 4"
    cases = [(RUN + model + " --context-parallel-size 2 --seq-length 66", 2, "not divisible by 2 x"),
             (RUN + model + " --tensor-model-parallel-size 8", 8, "exceeds --num-attention-heads"),
             (RUN + model + " --cp-comm-type rsa --context-parallel-size 2 --attention-backend flash", 2,
              "cannot apply to --cp-comm-type rsa")]
    for flags, world, needle in cases:
        line = refusal(flags.split(), world)
        assert needle in line and "\n" not in line, (flags, line)
    assert refusal((RUN + model).split(), 1) == ""
    assert pretrain_gpt.main((RUN + model + " --tensor-model-parallel-size 8").split()) == 2  # the same check
