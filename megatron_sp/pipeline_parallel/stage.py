"""One virtual pipeline stage of the GPT as a module that ``torch.distributed.pipelining`` can run.

A :class:`StageModule` is a view over this rank's :class:`~megatron_sp.model.GPTModel`: it
registers (shares, does not copy) the modules its stage uses, so DDP and FSDP2 can wrap it
and the schedule can call it, while the GPTModel keeps owning every parameter under its
global name (checkpoints, initialisation and the optimizer go through the GPTModel).

Data flow (``T`` TP size, ``s`` tokens of this CP rank, ``b`` micro-batch size)::

    first stage   tokens [b, s] -> embed -> layers -> hidden [s(/T under SP), b, h]  --send-->
    middle        hidden          -> layers -> hidden                                  --send-->
    last stage    hidden          -> layers -> final norm, output layer, vocab-parallel CE
                                   -> per-token loss [b, s] (fp32); the schedule's loss function
                                      masks, sums and divides it by the global batch's tokens

Every stage gets the micro-batch's ``position_ids`` (RoPE needs the global positions in every
layer) and ``labels`` as keyword arguments: the schedule hands each rank its own, cut into
micro-batches, so only the hidden state travels between stages.  The forward runs under
autocast (``--bf16/--fp16``) like the one-stage model; the hidden state keeps the dtype it
has there (fp32 with replicated state, the FSDP2 compute dtype with sharded state), so the
pipelined model computes exactly what the one-stage model does.
"""
from __future__ import annotations

import contextlib

import torch


class StageModule(torch.nn.Module):
    def __init__(self, model, stage_index: int, num_stages: int, layer_ids, autocast=None,
                 hidden_dtype=torch.float32):
        super().__init__()
        self.stage_index, self.num_stages = stage_index, num_stages
        self.is_first, self.is_last = stage_index == 0, stage_index == num_stages - 1
        self.layer_ids = list(layer_ids)
        self.autocast = autocast or contextlib.nullcontext
        self.hidden_dtype = hidden_dtype
        self._gpt = (model,)  # a tuple: not registered, the GPTModel is no child of its stages
        if self.is_first:
            self.embedding = model.embedding
            if hasattr(model, "position_embeddings"):
                self.position_embeddings = model.position_embeddings
        self.layers = torch.nn.ModuleList(model.decoder.layers[str(i)] for i in self.layer_ids)
        if self.is_last:
            self.final_norm, self.output_layer = model.final_norm, model.output_layer
            if not model.cfg.untie_embeddings_and_output_weights:  # the tied output weight
                self.embedding = model.embedding

    @property
    def gpt(self):
        return self._gpt[0]

    def forward(self, x, position_ids=None, labels=None, cu_seqlens=None):
        # x: tokens [b, s] on the first stage, else hidden [s(/T), b, h]; position_ids, labels: [b, s]
        # cu_seqlens: [b, n] document starts (--reset-attention-mask), every stage masks with them
        gpt = self.gpt
        with self.autocast():
            if self.is_first:
                x = gpt.embed(x, position_ids)
            mask = gpt.attention_mask(cu_seqlens, position_ids.shape[1])
            x = gpt.decoder(x, gpt.rope(position_ids), self.layer_ids, mask)
            if self.is_last:
                return gpt.head(x, labels).clone()  # [b, s] fp32; a copy: no view leaves an FSDP2 module
        return x.to(self.hidden_dtype).contiguous()

    def extra_repr(self) -> str:
        return f"stage {self.stage_index}/{self.num_stages}, layers {self.layer_ids}"


def stage_modules(model, layout, pp_rank: int, autocast=None, hidden_dtype=torch.float32) -> list:
    """The :class:`StageModule` of every virtual stage this PP rank runs, in chunk order."""
    return [StageModule(model, s, layout.num_stages, layout.stage_layers[s], autocast, hidden_dtype)
            for s in layout.stages_of(pp_rank)]
