#!/usr/bin/env bash
# GPT 70B-class (Llama-2-70B shape: 80 layers, hidden 8192, 64 heads in 8 query groups (GQA), SwiGLU 28672,
#   RMSNorm, RoPE, untied embeddings, no biases) on 8 nodes of 8 GPUs: TP 8 x PP 4 x CP 2.
#
# What it trains: a 69B-parameter GPT, bf16 autocast with fp32 master weights / Adam sharded over DP x CP
#   (--use-distributed-optimizer), on $DATA_PATH (Megatron .bin/.idx prefix; mock data when unset).
# Layout (defaults): 64 GPUs = PP 4 (1F1B, 20 layers a stage) x CP 2 (ring, zigzag) x TP 8 (+ Megatron-SP),
#   DP 1; sequence 32768, micro-batch 1, global batch 64 (64 micro-batches: 1F1B bubble 3/67 = 4.5%).
#   TP fastest, then CP, DP, PP: a TP group is one node, the CP pair two nodes, PP hops between node pairs.
#   VPP=5 interleaves (4 virtual stages of 5 layers a rank; bubble 3/259 = 1.2%, more activations in flight).
#   Longer sequences: raise CP (CP=4 PP=2 at 65536; NNODES stays GPUs / 8).
# Memory per GPU (python tools/pipeline_layouts.py --recompute-granularity full; memory/stages.py):
#   model state 16.2 GiB (16 B/param over TP 8 x PP 4 x DP x CP 2), compute weights and unsharded fp32
#   gradients of the stage ~13 GiB, activations with full recompute 2.9 GiB (stage 0 keeps 4 micro-batches
#   in flight) -> worst stage ~35 GiB of an 80 GB card.  Without recompute stage 0 needs ~107 GiB: keep it.
# Launch: on each of the 8 nodes
#   NNODES=8 NODE_RANK=<0..7> MASTER_ADDR=<node 0> DATA_PATH=... TOKENIZER_MODEL=... \
#   CHECKPOINT_DIR=/shared/ckpt bash examples/gpt_70b.sh
#   (or MODEL=gpt_70b NNODES=8 ... examples/multinode_torchrun.sh, or examples/slurm_gpt.sh under SLURM).
NAME=gpt_70b
TP=${TP:-8}
PP=${PP:-4}
CP=${CP:-2}
NNODES=${NNODES:-8}
SEQ_LENGTH=${SEQ_LENGTH:-32768}
MICRO_BATCH=${MICRO_BATCH:-1}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}
MOCK_VOCAB=32000
MODEL_ARGS=(--num-layers 80 --hidden-size 8192 --num-attention-heads 64 --group-query-attention --num-query-groups 8
            --ffn-hidden-size 28672 --swiglu --normalization RMSNorm --disable-bias-linear
            --untie-embeddings-and-output-weights --position-embedding-type rope
            --use-distributed-optimizer
            --recompute-granularity full --recompute-method uniform --recompute-num-layers 1)
LR_ARGS=(--lr 1.5e-4 --min-lr 1.5e-5 --lr-decay-style cosine --lr-warmup-iters 2000)
source "$(dirname "${BASH_SOURCE[0]}")/gpt_launch.sh"
