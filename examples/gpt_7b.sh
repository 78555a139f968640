#!/usr/bin/env bash
# GPT 7B-class (LLaMA-like: 32 layers, hidden 4096, 32 heads, SwiGLU 11008, RMSNorm, RoPE, untied) on one or more GPU nodes.
#
# What it trains: a 6.7B-parameter GPT, bf16 autocast with fp32 weights/Adam, on $DATA_PATH
#   (Megatron .bin/.idx prefix; mock data when unset) with the tokenizer in $TOKENIZER_MODEL.
# Layout (defaults): 8 GPUs = CP 2 (ring, zigzag) x TP 4 (+ Megatron-SP); sequence 32768, micro-batch 1. For 128K+: NNODES=4, CP=8.
#   Change TP / CP / CP_COMM_TYPE / NPROC_PER_NODE; DP = GPUs / (TP x CP).
# Memory per GPU (megatron_sp.memory, bf16): weights + grads + Adam 25 GiB at TP 4 (fp32 master weights: 16 B/param / TP),
#   activations ~23 GiB at seq 32768 / CP 2 / TP 4 -> about 48 GiB: needs 80 GB cards. TP 8 x CP 8 (64 GPUs) at seq 262144: ~44 GiB.
#   With fewer GPUs add EXTRA_ARGS="--recompute-granularity full --recompute-method uniform".
# Multi-node: NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> bash examples/gpt_7b.sh (torchrun
#   rendezvous), or examples/slurm_gpt.sh under SLURM.
NAME=gpt_7b
TP=${TP:-4}
CP=${CP:-2}
SEQ_LENGTH=${SEQ_LENGTH:-32768}
MICRO_BATCH=${MICRO_BATCH:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}
MOCK_VOCAB=32000
MODEL_ARGS=(--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008 --swiglu --normalization RMSNorm --disable-bias-linear --untie-embeddings-and-output-weights --position-embedding-type rope)
LR_ARGS=(--lr 1.5e-4 --min-lr 1.5e-5 --lr-decay-style cosine --lr-warmup-iters 2000)
source "$(dirname "${BASH_SOURCE[0]}")/gpt_launch.sh"
