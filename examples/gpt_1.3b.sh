#!/usr/bin/env bash
# GPT 1.3B (24 layers, hidden 2048, 16 heads, RoPE) on one GPU node.
#
# What it trains: a 1.3B-parameter GPT, bf16 autocast with fp32 weights/Adam, on $DATA_PATH
#   (Megatron .bin/.idx prefix; mock data when unset) with the tokenizer in $TOKENIZER_MODEL.
# Layout (defaults): 8 GPUs = DP 1 x CP 4 (ring attention, zigzag) x TP 2 (+ Megatron-SP); sequence 65536, micro-batch 1.
#   Change TP / CP / CP_COMM_TYPE / NPROC_PER_NODE; DP = GPUs / (TP x CP).
# Memory per GPU (megatron_sp.memory, bf16): weights + grads + Adam 9.8 GiB at TP 2 (19.5 GiB at TP 1),
#   activations ~15 GiB at seq 65536 / CP 4 / TP 2 -> about 27 GiB per GPU. One GPU (TP=1 CP=1 NPROC_PER_NODE=1):
#   ~35 GiB at seq 8192, ~80 GiB at seq 32768 (add EXTRA_ARGS="--recompute-granularity full --recompute-method uniform").
# Multi-node: NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> bash examples/gpt_1.3b.sh (torchrun
#   rendezvous), or examples/slurm_gpt.sh under SLURM.
NAME=gpt_1.3b
TP=${TP:-2}
CP=${CP:-4}
SEQ_LENGTH=${SEQ_LENGTH:-65536}
MICRO_BATCH=${MICRO_BATCH:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
MOCK_VOCAB=50257
MODEL_ARGS=(--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --position-embedding-type rope)
LR_ARGS=(--lr 2e-4 --min-lr 2e-5 --lr-decay-style cosine --lr-warmup-iters 2000)
source "$(dirname "${BASH_SOURCE[0]}")/gpt_launch.sh"
