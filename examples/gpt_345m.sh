#!/usr/bin/env bash
# GPT 345M (Megatron's GPT-2 medium shape: 24 layers, hidden 1024, 16 heads, RoPE) on one GPU node.
#
# What it trains: a 345M-parameter GPT, bf16 autocast with fp32 weights/Adam, on $DATA_PATH
#   (Megatron .bin/.idx prefix; mock data when unset) with the tokenizer in $TOKENIZER_MODEL.
# Layout (defaults): 8 GPUs = DP 4 x CP 2 (ring attention, zigzag), TP 1; sequence 8192, micro-batch 4.
#   Change TP / CP / CP_COMM_TYPE / NPROC_PER_NODE; DP = GPUs / (TP x CP).
# Memory per GPU (megatron_sp.memory, bf16): weights + grads + Adam 5.3 GiB (16 B/param / TP),
#   activations ~16 GiB at seq 8192 / CP 2 / micro-batch 4 -> about 24 GiB: fits 40 GB and 80 GB cards.
#   CP 1 at seq 4096, micro-batch 8 needs ~43 GiB.
# Multi-node: NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0> bash examples/gpt_345m.sh (torchrun
#   rendezvous), or examples/slurm_gpt.sh under SLURM.
NAME=gpt_345m
TP=${TP:-1}
CP=${CP:-2}
SEQ_LENGTH=${SEQ_LENGTH:-8192}
MICRO_BATCH=${MICRO_BATCH:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
MOCK_VOCAB=50257
MODEL_ARGS=(--num-layers 24 --hidden-size 1024 --num-attention-heads 16 --position-embedding-type rope)
LR_ARGS=(--lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 2000)
source "$(dirname "${BASH_SOURCE[0]}")/gpt_launch.sh"
