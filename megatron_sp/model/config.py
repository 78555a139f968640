"""The GPT's configuration, validated against the parallel layout before anything runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..sequence_parallel.config import RING


def default_ffn_hidden_size(hidden_size: int, swiglu: bool) -> int:
    """Megatron-LM's default MLP width: ``4 h``, or with SwiGLU (two input projections)
    ``int(8 h / 3 / 64) * 64``, so the parameter count stays near the GELU model's."""
    if not swiglu:
        return 4 * hidden_size
    width = int((4 * hidden_size * 2 / 3) / 64) * 64
    if width == 0:
        raise ValueError(f"--swiglu without --ffn-hidden-size gives Megatron's int(8 h / 3 / 64) * 64 = 0 for "
                         f"--hidden-size {hidden_size}; pass --ffn-hidden-size")
    return width


@dataclass
class GPTConfig:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    vocab_size: int  # padded: divisible by the TP size
    max_position_embeddings: int
    ffn_hidden_size: Optional[int] = None
    num_query_groups: Optional[int] = None  # None: multi-head attention
    kv_channels: Optional[int] = None
    position_embedding_type: str = "learned_absolute"  # or "rope"
    rotary_base: float = 10000.0
    normalization: str = "LayerNorm"  # or "RMSNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = False
    add_bias_linear: bool = True
    untie_embeddings_and_output_weights: bool = False
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    init_method_std: float = 0.02
    sequence_parallel: bool = False
    cp_comm_type: str = RING
    attention_backend: str = "auto"  # --attention-backend (sequence_parallel/backends.py)
    recompute_granularity: Optional[str] = None  # None, "full", "selective"
    recompute_method: Optional[str] = None  # "uniform" or "block" (full only)
    recompute_num_layers: int = 1
    # long-sequence memory (megatron_sp/activations): tokens per chunk of the fused output layer +
    # cross entropy (0: full logits), the fused path even at one chunk, tokens per MLP tile (0: untiled),
    # layers whose saved activations wait in host memory
    cross_entropy_chunk_size: int = 2048
    cross_entropy_loss_fusion: bool = False
    tiled_mlp_chunk_size: int = 0
    cpu_offloading_num_layers: int = 0
    # Megatron-LM interop (issue 13)
    rotary_percent: float = 1.0  # fraction of each head's channels RoPE rotates
    rotary_seq_len_interpolation_factor: Optional[float] = None  # positions / factor
    rope_scaling_factor: Optional[float] = None  # Llama-3.1 frequency scaling (--use-rope-scaling)
    apply_layernorm_1p: bool = False  # norm weight stored as gamma - 1
    add_qkv_bias: bool = False  # bias in linear_qkv even without add_bias_linear (Qwen2)
    openai_gelu: bool = False  # tanh-approximated GELU

    def __post_init__(self):
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = default_ffn_hidden_size(self.hidden_size, self.swiglu)
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"--hidden-size {self.hidden_size} is not divisible by "
                                 f"--num-attention-heads {self.num_attention_heads}; set --kv-channels")
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"--num-attention-heads {self.num_attention_heads} is not divisible by "
                             f"--num-query-groups {self.num_query_groups}")
        if self.position_embedding_type not in ("learned_absolute", "rope"):
            raise ValueError(f"--position-embedding-type {self.position_embedding_type!r}: "
                             "choose learned_absolute or rope")
        if self.normalization not in ("LayerNorm", "RMSNorm"):
            raise ValueError(f"--normalization {self.normalization!r}: choose LayerNorm or RMSNorm")
        rot = int(self.kv_channels * self.rotary_percent)
        if self.position_embedding_type == "rope" and (rot < 2 or rot % 2):
            raise ValueError(f"--rotary-percent {self.rotary_percent} rotates {rot} of --kv-channels "
                             f"{self.kv_channels} channels; it must be an even number >= 2")
        if self.recompute_granularity not in (None, "full", "selective"):
            raise ValueError(f"--recompute-granularity {self.recompute_granularity!r}: choose full or selective")
        if self.cross_entropy_chunk_size < 0 or self.tiled_mlp_chunk_size < 0:
            raise ValueError(f"--cross-entropy-chunk-size {self.cross_entropy_chunk_size} / --tiled-mlp-chunk-size "
                             f"{self.tiled_mlp_chunk_size}: a chunk is a number of tokens >= 0 (0: off)")
        if self.recompute_granularity == "full" and self.recompute_method not in ("uniform", "block"):
            raise ValueError("--recompute-granularity full needs --recompute-method uniform or block "
                             f"(got {self.recompute_method!r})")

    def check_tensor_parallel(self, tp: int) -> None:
        """Errors name the flags and the numbers."""
        if tp > self.num_attention_heads:
            raise ValueError(f"--tensor-model-parallel-size {tp} exceeds --num-attention-heads "
                             f"{self.num_attention_heads}: tensor parallelism splits whole heads, so it stops at "
                             f"the head count; use --context-parallel-size for the other devices")
        for value, flag in ((self.num_attention_heads, "--num-attention-heads"),
                            (self.num_query_groups, "--num-query-groups"),
                            (self.ffn_hidden_size, "--ffn-hidden-size"),
                            (self.vocab_size, "padded --vocab-size")):
            if value % tp:
                raise ValueError(f"{flag} {value} is not divisible by --tensor-model-parallel-size {tp}; "
                                 f"choose a TP size that divides it")
