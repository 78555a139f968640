"""The GPT: vocab-parallel embedding, decoder block, final norm, vocab-parallel output.

``forward(tokens, position_ids, labels)`` works on this rank's part of the sequence
(its CP shard, in zigzag order where the attention mode wants it) with the tokens'
global position ids, and returns the per-token loss ``[b, s_local]`` in fp32; the
training loop reduces loss sums and token counts over CP and DP.  The output layer and
the loss run fused over chunks of the local tokens when there are more than
``cross_entropy_chunk_size`` of them, so the ``[s, b, V/T]`` logits never exist (on the
last pipeline stage too: :meth:`head` is where the loss is).  Without labels it returns the
logits ``[b, s_local, V]`` gathered over TP (for generation).

Under pipeline parallelism a rank builds only its stage's part (``layers``: the global
indices of its decoder layers; ``pre_process``: the embedding, on the first stage;
``post_process``: final norm, output layer and loss, on the last), and the pipeline runs
:meth:`embed`, ``decoder`` and :meth:`head` piecewise (pipeline_parallel/stage.py).
Parameter names stay global.  With tied embeddings the last stage holds its own copy of
``embedding.weight`` (same name, same initial value: the initialisation is seeded by
name); the two copies' gradients are summed over the embedding group, as in Megatron,
so they stay equal, and the copy is marked ``pipeline_shared`` so that the gradient norm
counts it once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..tensor_parallel import (ColumnParallelLinear, VocabParallelEmbedding, gather_from_tensor_parallel_region,
                               init_parameters, scatter_to_sequence_parallel_region, set_tp_attributes,
                               vocab_parallel_cross_entropy)
from ..tensor_parallel.cross_entropy import chunked_output_cross_entropy
from .config import GPTConfig
from .rope import RotaryEmbedding
from .transformer import TransformerBlock, build_norm, dropout_add


class GPTModel(torch.nn.Module):
    def __init__(self, cfg: GPTConfig, mesh, rng, layers=None, pre_process: bool = True,
                 post_process: bool = True):
        super().__init__()
        cfg.check_tensor_parallel(mesh.tp_size)
        self.cfg, self.mesh, self.rng = cfg, mesh, rng
        self.pre_process, self.post_process = pre_process, post_process
        sp = cfg.sequence_parallel and mesh.tp_size > 1
        self.sequence_parallel = sp
        tied = not cfg.untie_embeddings_and_output_weights
        if pre_process or (post_process and tied):
            self.embedding = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, mesh.tp_group,
                                                    sequence_parallel=sp)
            if not pre_process:  # the last stage's copy of the tied embedding
                self.embedding.weight.pipeline_shared = True
        if cfg.position_embedding_type == "learned_absolute":
            if pre_process:
                self.position_embeddings = torch.nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
                set_tp_attributes(self.position_embeddings.weight, None, 1, "normal")
        else:
            self.rotary = RotaryEmbedding(cfg.kv_channels, cfg.rotary_base, cfg.rotary_percent,
                                          cfg.rotary_seq_len_interpolation_factor, cfg.rope_scaling_factor)
        self.decoder = TransformerBlock(cfg, mesh, rng, layers)
        if post_process:
            self.final_norm = build_norm(cfg)
            self.output_layer = ColumnParallelLinear(cfg.hidden_size, cfg.vocab_size, mesh.tp_group, bias=False,
                                                     sequence_parallel=sp, skip_weight=tied)
        # As Megatron: --decoupled-lr applies to these (training/optimizer.py)
        if hasattr(self, "embedding"):
            self.embedding.weight.is_embedding_or_output_parameter = True
        if post_process and self.output_layer.weight is not None:
            self.output_layer.weight.is_embedding_or_output_parameter = True

    def init_weights(self, seed: int) -> None:
        init_parameters(self, seed, self.mesh.tp_rank, self.mesh.tp_size, self.cfg.init_method_std,
                        self.cfg.num_layers)

    def forward(self, tokens, position_ids, labels=None):
        # tokens, position_ids, labels: [b, s_local]
        return self.head(self.decoder(self.embed(tokens, position_ids), self.rope(position_ids)), labels)

    def embed(self, tokens, position_ids):
        # tokens, position_ids: [b, s_local] -> x: [s, b, h] (or [s/T, b, h] under Megatron-SP)
        cfg = self.cfg
        x = self.embedding(tokens)
        if cfg.position_embedding_type == "learned_absolute":
            pos = F.embedding(position_ids.t(), self.position_embeddings.weight)  # [s, b, h]
            if self.sequence_parallel:
                pos = scatter_to_sequence_parallel_region(pos, self.mesh.tp_group)
            x = x + pos
        return dropout_add(x, 0.0, cfg.hidden_dropout, self.training, self.rng, self.sequence_parallel)

    def rope(self, position_ids):
        """RoPE's ``(cos, sin)`` of the global positions, or None (learned positions)."""
        return self.rotary(position_ids) if self.cfg.position_embedding_type == "rope" else None

    def head(self, x, labels=None):
        # x: [s(/T), b, h] -> per-token loss [b, s] (fp32), or logits [b, s, V] without labels
        x = self.final_norm(x)
        weight = None if self.cfg.untie_embeddings_and_output_weights else self.embedding.weight
        if labels is not None and self._fused_loss(labels.numel()):
            x = self.output_layer.gather_input(x)  # [s, b, h]
            weight = self.output_layer.weight if weight is None else weight
            return chunked_output_cross_entropy(x, weight, labels.t(), self.mesh.tp_group,
                                                self.cfg.cross_entropy_chunk_size).t()  # [b, s]
        logits = self.output_layer(x, weight)  # [s, b, V/T]
        if labels is None:
            return gather_from_tensor_parallel_region(logits, self.mesh.tp_group).transpose(0, 1)
        return vocab_parallel_cross_entropy(logits, labels.t(), self.mesh.tp_group).t()  # [b, s]

    def _fused_loss(self, tokens: int) -> bool:
        """The chunked output layer + loss: whenever it saves memory (more local tokens than one
        chunk), or always with ``--cross-entropy-loss-fusion``; never with chunk size 0."""
        chunk = self.cfg.cross_entropy_chunk_size
        return chunk > 0 and (self.cfg.cross_entropy_loss_fusion or tokens > chunk)
