"""megatron_sp: Megatron-style GPT pretraining whose centre is sequence parallelism."""
__version__ = "0.1.0"
