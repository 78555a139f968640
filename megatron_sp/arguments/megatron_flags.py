"""The tables of Megatron-LM flags that are not features of their own here (see megatron_compat.py).

Each entry: the flag -> its argparse keyword arguments (without dest/default) and one clause
saying why; REFUSED entries also name the values that are harmless (or None).
"""
from __future__ import annotations

# spec: argparse keyword arguments of the flag (without dest/default), reason: one clause.
SWITCH = {"action": "store_true"}
VALUE = {}
INT = {"type": int}
MANY = {"nargs": "*"}

# Comment lines give the family, so a reviewer sees why a flag is here.
NO_EFFECT = {
    # Megatron-LM itself ignores these now
    "--use-mcore-models": (SWITCH, "Megatron-LM ignores it too (megatron-core models are its only models)"),
    "--rampup-batch-size": ({"nargs": 3}, "Megatron-LM ignores it too (deprecated; the global batch is constant)"),
    # kernel and fusion choices: this codebase picks kernels by device and dtype
    "--use-legacy-models": (SWITCH, "there is one model implementation here"),
    "--transformer-impl": (VALUE, "there is one transformer implementation here; kernels are chosen by device"),
    "--use-flash-attn": (SWITCH, "the flash kernel is chosen by device (see the '> attention:' start-up line)"),
    "--use-flash-attn-v2": (SWITCH, "the flash kernel is chosen by device (see the '> attention:' start-up line)"),
    "--use-flash-attn-triton": (SWITCH, "the flash kernel is chosen by device"),
    "--no-masked-softmax-fusion": (SWITCH, "softmax runs inside the attention kernel, always in fp32"),
    "--masked-softmax-fusion": (SWITCH, "softmax runs inside the attention kernel, always in fp32"),
    "--attention-softmax-in-fp32": (SWITCH, "softmax always runs in fp32 here"),
    "--apply-query-key-layer-scaling": (SWITCH, "it only rescales fp16 scores around an fp32 softmax, which "
                                                "the attention kernels here always use"),
    "--no-bias-gelu-fusion": (SWITCH, "there is no fused bias-GELU kernel here"),
    "--no-bias-swiglu-fusion": (SWITCH, "there is no fused bias-SwiGLU kernel here"),
    "--no-bias-dropout-fusion": (SWITCH, "there is no fused bias-dropout-add kernel here"),
    "--no-rope-fusion": (SWITCH, "RoPE is applied by one implementation, unfused"),
    "--apply-rope-fusion": (SWITCH, "RoPE is applied by one implementation, unfused"),
    "--no-persist-layer-norm": (SWITCH, "there is no persistent LayerNorm kernel here"),
    "--no-gradient-accumulation-fusion": (SWITCH, "weight gradients are accumulated by autograd here"),
    "--gradient-accumulation-fusion": (SWITCH, "weight gradients are accumulated by autograd here"),
    "--no-async-tensor-model-parallel-allreduce": (SWITCH, "TP communication is not overlapped here"),
    "--async-tensor-model-parallel-allreduce": (SWITCH, "TP communication is not overlapped here"),
    "--tp-comm-overlap": (SWITCH, "TP communication is not overlapped with GEMMs here"),
    "--overlap-p2p-communication": (SWITCH, "stage-to-stage sends are torch.distributed.pipelining's own"),
    "--defer-embedding-wgrad-compute": (SWITCH, "an overlap optimisation of pipeline parallelism"),
    "--use-nccl-ub": (SWITCH, "an NCCL buffer-registration optimisation"),
    "--enable-cuda-graph": (SWITCH, "CUDA graphs are not used here"),
    "--external-cuda-graph": (SWITCH, "CUDA graphs are not used here"),
    "--cuda-graph-impl": (VALUE, "CUDA graphs are not used here"),
    "--cuda-graph-scope": (VALUE, "CUDA graphs are not used here"),
    "--use-te-rng-tracker": (SWITCH, "the RNG tracker here is torch's"),
    "--te-rng-tracker": (SWITCH, "the RNG tracker here is torch's"),
    "--use-cpu-initialization": (SWITCH, "weights are always initialised on the CPU, layout-invariantly"),
    "--init-model-with-meta-device": (SWITCH, "weights are always initialised on the CPU, layout-invariantly"),
    "--distribute-saved-activations": (SWITCH, "a memory optimisation of full recompute not built here"),
    "--distribute-checkpointed-activations": (SWITCH, "a memory optimisation of full recompute not built here"),
    "--deepspeed-activation-checkpointing": (SWITCH, "activation recompute is --recompute-granularity here"),
    # precision: this codebase keeps these in fp32, which is at least as exact
    "--grad-reduce-in-bf16": (SWITCH, "gradients are reduced in fp32 here"),
    "--accumulate-allreduce-grads-in-fp32": (SWITCH, "gradients are always accumulated and reduced in fp32 here"),
    "--fp16-lm-cross-entropy": (SWITCH, "the cross entropy is always computed in fp32 here"),
    # memory management, profiling and monitoring hooks
    "--manual-gc": (SWITCH, "Python's garbage collector runs with its defaults here"),
    "--manual-gc-interval": (INT, "Python's garbage collector runs with its defaults here"),
    "--no-manual-gc-eval": (SWITCH, "Python's garbage collector runs with its defaults here"),
    "--empty-unused-memory-level": (INT, "the CUDA caching allocator is left alone here"),
    "--profile": (SWITCH, "no profiler hooks here; run under nsys or torch.profiler instead"),
    "--use-pytorch-profiler": (SWITCH, "no profiler hooks here; run under torch.profiler instead"),
    "--profile-step-start": (INT, "no profiler hooks here"),
    "--profile-step-end": (INT, "no profiler hooks here"),
    "--profile-ranks": ({"nargs": "+", "type": int}, "no profiler hooks here"),
    "--record-memory-history": (SWITCH, "no memory-history recorder here"),
    "--memory-snapshot-path": (VALUE, "no memory-history recorder here"),
    "--log-straggler": (SWITCH, "no straggler detector here"),
    "--disable-straggler-on-startup": (SWITCH, "no straggler detector here"),
    "--straggler-ctrlr-port": (INT, "no straggler detector here"),
    "--straggler-minmax-count": (INT, "no straggler detector here"),
    "--enable-one-logger": (SWITCH, "no one-logger integration here"),
    "--no-one-logger": (SWITCH, "no one-logger integration here"),
    "--one-logger-project": (VALUE, "no one-logger integration here"),
    "--one-logger-run-name": (VALUE, "no one-logger integration here"),
    "--one-logger-async": (SWITCH, "no one-logger integration here"),
    "--adlr-autoresume": (SWITCH, "no ADLR autoresume here; use --exit-signal-handler or --exit-duration-in-mins"),
    "--adlr-autoresume-interval": (INT, "no ADLR autoresume here"),
    "--enable-ft-package": (SWITCH, "no fault-tolerance package integration here"),
    "--calc-ft-timeouts": (SWITCH, "no fault-tolerance package integration here"),
    "--rerun-mode": (VALUE, "no rerun state machine here; NaN checks are --check-for-nan-in-loss-and-grad"),
    "--check-for-spiky-loss": (SWITCH, "no rerun state machine here"),
    "--check-for-large-grads": (SWITCH, "no rerun state machine here"),
    "--test-mode": (SWITCH, "no test mode here"),
    # timers and logging detail this codebase does not have
    "--timing-log-level": (INT, "there are no per-region timers; the log line's elapsed time is the timer"),
    "--timing-log-option": (VALUE, "there are no per-region timers"),
    "--log-timers-to-tensorboard": (SWITCH, "there are no per-region timers to write"),
    "--no-barrier-with-level-1-timing": (SWITCH, "there are no per-region timers"),
    "--tensorboard-log-interval": (INT, "TensorBoard gets the scalars of every --log-interval line"),
    "--log-progress": (SWITCH, "no progress.txt is written; the log line carries consumed samples"),
    "--logging-level": (INT, "this codebase prints instead of using the logging module"),
    "--log-energy": (SWITCH, "energy is not measured here"),
    "--log-device-memory-used": (SWITCH, "the log line reports this process's memory instead"),
    "--log-runtime-to-tensorboard": (SWITCH, "runtime metrics are not written"),
    "--log-l2-norm-grad-to-tensorboard": (SWITCH, "the grad norm of the log line is written instead"),
    # data loading details that cannot change which tokens are read
    "--no-mmap-bin-files": (SWITCH, ".bin files are always memory-mapped here; the tokens read are the same"),
    "--create-attention-mask-in-dataloader": (SWITCH, "causal attention kernels need no mask"),
    "--num-dataset-builder-threads": (INT, "dataset indices are built by one thread per run"),
    "--mmap-warmup": (SWITCH, ".bin files are memory-mapped on demand"),
    "--trust-remote-code": (SWITCH, "tokenizers here never run remote code"),
    # checkpoint tuning of other formats; saving policy here is fixed
    "--no-save-optim": (SWITCH, "checkpoints always hold the optimizer state here (load with --no-load-optim)"),
    "--no-save-rng": (SWITCH, "checkpoints always hold the RNG state here (load with --no-load-rng)"),
    # DeepSpeed engine (Megatron-DeepSpeed scripts): the native loop trains the same model
    "--deepspeed": (SWITCH, "the DeepSpeed engine is not used; this loop trains the same model (ZeRO-0 = "
                            "plain data parallelism)"),
    "--no-pipeline-parallel": (SWITCH, "DeepSpeed's switch; pipeline parallelism here is --pipeline-model-parallel-size"),
}

# Whole families, for flags not listed one by one (checked on the unknown flags only).
REFUSED_FAMILIES = {
    "--moe-": "mixture of experts is not supported",
    "--fp8": "fp8 training is not supported (use --bf16)",
    "--fp4": "fp4 training is not supported (use --bf16)",
    "--mamba-": "Mamba / hybrid models are not supported",
    "--hybrid-": "Mamba / hybrid models are not supported",
    "--mtp-": "multi-token prediction is not supported",
    "--retro-": "Retro is not supported",
    "--heterogeneous-": "heterogeneous layer configurations are not supported",
    "--yarn-": "YaRN RoPE is not supported",
    "--kv-lora-": "multi-latent attention is not supported",
    "--q-lora-": "multi-latent attention is not supported",
    "--qk-": "query/key normalisation or clipping is not supported",
    "--lr-wsd-": "the WSD learning-rate schedule is not supported",
    "--rl-": "reinforcement learning is not supported",
    "--grpo-": "reinforcement learning is not supported",
    "--inference-": "inference-engine options do not apply to pretraining",
    "--megatron-fsdp-": "Megatron-FSDP is not built (FSDP here is torch FSDP2)",
    "--fsdp-": "Megatron-FSDP is not built (FSDP here is torch FSDP2)",
    "--vision-": "vision models are not supported",
    "--non-persistent-": "non-persistent checkpoints are not supported",
}

PP_SPLIT = "uneven pipeline splits here are --decoder-first/last-pipeline-num-layers"
REFUSED = {
    # name: (spec, reason, harmless values (as parsed) or None)
    "--pipeline-model-parallel-split-rank": (INT, "encoder-decoder models are not supported", None),
    "--account-for-embedding-in-pipeline-split": (SWITCH, PP_SPLIT, None),
    "--account-for-loss-in-pipeline-split": (SWITCH, PP_SPLIT, None),
    "--num-experts": (INT, "mixture of experts is not supported", (0,)),
    "--expert-model-parallel-size": (INT, "mixture of experts is not supported", (1,)),
    "--expert-tensor-parallel-size": (INT, "mixture of experts is not supported", (1,)),
    "--window-size": (VALUE, "sliding-window attention is not supported", None),
    "--window-attn-skip-freq": (VALUE, "sliding-window attention is not supported", None),
    "--rotary-interleaved": (SWITCH, "interleaved RoPE is not supported (RoPE here is rotate-half)", None),
    "--rope-type": (VALUE, "only --rope-type rope is supported", ("rope",)),
    "--no-rope-freq": (VALUE, "skipping RoPE in some layers is not supported", None),
    "--mrope-section": (MANY, "multimodal RoPE is not supported", None),
    "--multi-latent-attention": (SWITCH, "multi-latent attention is not supported", None),
    "--squared-relu": (SWITCH, "the squared-ReLU activation is not supported (GELU or --swiglu)", None),
    "--quick-geglu": (SWITCH, "the quick-GEGLU activation is not supported (GELU or --swiglu)", None),
    "--apply-residual-connection-post-layernorm": (SWITCH, "post-LayerNorm residuals are not supported", None),
    "--fp32-residual-connection": (SWITCH, "fp32 residual streams are not supported (parameters and "
                                           "the residual follow autocast here)", None),
    "--spec": (MANY, "custom layer specs are not supported", None),
    "--yaml-cfg": (VALUE, "YAML configurations are not supported; pass flags", None),
    "--use-precision-aware-optimizer": (SWITCH, "the optimizer state is always fp32 here", None),
    "--use-megatron-fsdp": (SWITCH, "Megatron-FSDP is not built (FSDP here is torch FSDP2)", None),
    "--data-parallel-sharding-strategy": (VALUE, "Megatron-FSDP is not built (FSDP here is torch FSDP2)", None),
    "--recompute-modules": (MANY, "selective recompute here recomputes core attention only "
                                  "(--recompute-modules core_attn)", (["core_attn"],)),
    "--reset-position-ids": (SWITCH, "per-document position ids are not supported", None),
    "--reset-attention-mask": (SWITCH, "per-document attention masks are not supported", None),
    "--train-data-path": (MANY, "per-split data paths are not supported; use --data-path with --split", None),
    "--valid-data-path": (MANY, "per-split data paths are not supported; use --data-path with --split", None),
    "--test-data-path": (MANY, "per-split data paths are not supported; use --data-path with --split", None),
    "--data-args-path": (VALUE, "data-path files are not supported; use --data-path", None),
    "--per-split-data-args-path": (VALUE, "data-path files are not supported; use --data-path", None),
    "--multiple-validation-sets": (SWITCH, "several validation sets are not supported", None),
    "--full-validation": (SWITCH, "full-set validation is not supported; use --eval-iters", None),
    "--skip-train": (SWITCH, "evaluation-only runs are not supported", None),
    "--dataloader-type": (VALUE, "only the single-pass data order is supported", ("single",)),
    "--sft": (SWITCH, "supervised fine-tuning datasets are not supported", None),
    "--vocab-extra-ids": (INT, "extra vocabulary ids (T5 sentinels) are not supported", (0,)),
    "--tokenizer-special-tokens": (MANY, "extra special tokens are not supported", None),
    "--start-weight-decay": ({"type": float}, "weight-decay schedules are not supported", None),
    "--end-weight-decay": ({"type": float}, "weight-decay schedules are not supported", None),
    "--weight-decay-incr-style": (VALUE, "weight-decay schedules are not supported", ("constant",)),
    "--step-batch-size-schedule": (VALUE, "batch-size schedules are not supported", None),
    "--decrease-batch-size-if-needed": (SWITCH, "the global batch must divide exactly here", None),
    "--init-method-xavier-uniform": (SWITCH, "Xavier initialisation is not supported", None),
    "--data-parallel-random-init": (SWITCH, "initialisation is the same on every rank here by design", None),
    "--pretrained-checkpoint": (VALUE, "use --load DIR --finetune", None),
    "--ckpt-step": (INT, "loading a chosen iteration is not supported; point the tracker file at it", None),
    "--use-mp-args-from-checkpoint-args": (SWITCH, "the parallel layout always comes from the flags here "
                                                   "(any checkpoint loads into any layout)", None),
    "--save-retain-interval": (INT, "use --keep-last-n-checkpoints", None),
    "--train-tokens": (INT, "token-based training lengths are not supported; use --train-samples", None),
    "--lr-decay-tokens": (INT, "token-based schedules are not supported; use --lr-decay-samples", None),
    "--lr-warmup-tokens": (INT, "token-based schedules are not supported; use --lr-warmup-samples", None),
    "--head-lr-mult": ({"type": float}, "per-head learning-rate multipliers are not supported", None),
    "--freeze-all-layers": (SWITCH, "freezing layers is not supported", None),
    # DeepSpeed: ZeRO stages above 0 map to other flags here
    "--zero-stage": (INT, "ZeRO stages above 0 are this codebase's --use-distributed-optimizer (1, 2) or "
                          "--use-torch-fsdp2 (3)", (0,)),
    # Megatron-LM refuses these itself ("no longer valid")
    "--batch-size": (INT, "no longer valid in Megatron-LM either: use --micro-batch-size", None),
    "--warmup": (INT, "no longer valid in Megatron-LM either: use --lr-warmup-iters or --lr-warmup-fraction", None),
    "--model-parallel-size": (INT, "no longer valid in Megatron-LM either: use --tensor-model-parallel-size", None),
    "--decoder-seq-length": (INT, "encoder-decoder models are not supported", None),
}

# Deprecated spellings: parser entries with their own dest; apply_deprecated rewrites them.
DEPRECATED = {
    "--use-rotary-position-embeddings": (SWITCH, "--position-embedding-type rope"),
    "--no-position-embedding": ({"action": "store_false", "dest": "add_position_embedding"},
                                "no learned position embedding (with RoPE there is none anyway)"),
    "--checkpoint-activations": (SWITCH, "--recompute-granularity full --recompute-method uniform "
                                         "--recompute-num-layers <--checkpoint-num-layers>"),
    "--checkpoint-num-layers": (INT, "--recompute-num-layers"),
    "--num-key-value-heads": (INT, "--group-query-attention --num-query-groups"),
    "--layernorm-epsilon": ({"type": float}, "--norm-epsilon"),
    "--rotary-position-embeddings-theta": ({"type": float}, "--rotary-base"),
    "--encoder-num-layers": (INT, "--num-layers"),
    "--encoder-seq-length": (INT, "--seq-length"),
    "--ds-sequence-parallel-size": (INT, "--context-parallel-size N --cp-comm-type a2a (DeepSpeed-Ulysses)"),
}

# Flags that ask for exactly what happens here: accepted silently (parser entries with a dest;
# apply_deprecated checks the few whose value matters).
SAME_AS_HERE = {
    "--data-impl": (VALUE, "the indexed dataset is always memory-mapped"),
    "--no-query-key-layer-scaling": (SWITCH, "query-key layer scaling is off here, as in Megatron-LM"),
    "--no-create-attention-mask-in-dataloader": (SWITCH, "no mask is ever created here"),
    "--log-throughput": (SWITCH, "the log line always carries throughput"),
    "--local-rank": ({"type": int, "dest": "compat_local_rank"}, "torchrun's LOCAL_RANK is used"),
    "--local_rank": ({"type": int, "dest": "compat_local_rank"}, "torchrun's LOCAL_RANK is used"),
    "--deepspeed_config": (VALUE, "once its batch sizes and precision agree with the flags"),
    "--deepspeed-config": ({"dest": "deepspeed_config"}, "once its batch sizes and precision agree "
                                                         "with the flags"),
}
