"""Per-rank random streams for dropout, with no global state.

Two streams per rank:

* the *default* generator, seeded identically across the TP group (activations
  outside Megatron-SP regions are replicated over TP, so their dropout masks must
  agree) and differently across CP and DP ranks (they hold different tokens) and
  pipeline stages (they hold different layers);
* a *tensor-parallel* stream (``fork()``), seeded differently on every TP rank too,
  for dropout on sharded activations: attention heads split by TP, and the
  sequence shards of Megatron-SP regions.

Worked example, TP = 2, seed 1234: ranks 0 and 1 draw the same hidden-dropout mask
on the replicated ``[s, b, h]`` output, but different attention-dropout masks on
their different heads.  ``get_states``/``set_states`` capture both streams so that
a checkpoint resumes bit-exactly.
"""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

_TP_OFFSET = 2718


def _device_rng(device: torch.device):
    return torch.cuda if device.type == "cuda" else None


class RNGTracker:
    def __init__(self, seed: int, tp_rank: int = 0, cp_rank: int = 0, dp_rank: int = 0,
                 device: torch.device | str = "cpu", pp_rank: int = 0):
        self.device = torch.device(device)
        # pipeline stages hold different layers: their dropout masks must not repeat each other
        self.default_seed = seed + 1009 * cp_rank + 100_003 * dp_rank + 10_000_019 * pp_rank
        self.tp_seed = self.default_seed + _TP_OFFSET + tp_rank
        torch.manual_seed(self.default_seed)
        self._tp_state = self._seeded_state(self.tp_seed)

    def _get(self):
        dev = _device_rng(self.device)
        return dev.get_rng_state() if dev else torch.get_rng_state()

    def _set(self, state):
        dev = _device_rng(self.device)
        (dev.set_rng_state if dev else torch.set_rng_state)(state)

    def _seeded_state(self, seed):
        saved = self._get()
        dev = _device_rng(self.device)
        (dev.manual_seed if dev else torch.manual_seed)(seed)
        state = self._get()
        self._set(saved)
        return state

    @contextlib.contextmanager
    def fork(self):
        """Run the body on the tensor-parallel stream, then return to the default one."""
        saved = self._get()
        self._set(self._tp_state)
        try:
            yield
        finally:
            self._tp_state = self._get()
            self._set(saved)

    def get_states(self) -> dict:
        states = {"cpu": torch.get_rng_state(), "tensor_parallel": self._tp_state.clone()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state()
        return states

    def set_states(self, states: dict) -> None:
        torch.set_rng_state(states["cpu"])
        self._tp_state = states["tensor_parallel"].clone()
        if self.device.type == "cuda" and "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"])

    def checkpoint(self, fn, *args):
        """Activation checkpointing that replays the same dropout masks.

        ``torch.utils.checkpoint`` restores the default generator before recomputing;
        the tensor-parallel stream lives here, so it is snapshotted too: the recompute
        starts from the snapshot and afterwards leaves the stream where it was.
        """
        snapshot, calls = self._tp_state.clone(), [0]

        def replay(*inner):
            current = self._tp_state
            self._tp_state = snapshot.clone()
            try:
                return fn(*inner)
            finally:
                if calls[0]:
                    self._tp_state = current
                calls[0] += 1

        return torch.utils.checkpoint.checkpoint(replay, *args, use_reentrant=False,
                                                 preserve_rng_state=True)
