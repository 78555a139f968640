"""Instrumentation for tests and benchmarks: what the CP code did, recorded only while asked.

    with COLLECTIVES.recording() as sent:      # comm.py: (kind, bytes) of every send / all-to-all
        attn(q, k, v)
    with BLOCKS.recording() as steps:          # masks.py: (ran a kernel, pairs) of every ring step

Nothing is recorded (and nothing costs) outside a ``recording()``; recordings nest.
"""
from __future__ import annotations

import contextlib
from typing import Optional


class Recorder:
    def __init__(self):
        self._records: Optional[list] = None

    @contextlib.contextmanager
    def recording(self):
        previous, self._records = self._records, []
        try:
            yield self._records
        finally:
            self._records = previous

    @property
    def on(self) -> bool:
        return self._records is not None

    def add(self, item) -> None:
        if self._records is not None:
            self._records.append(item)


COLLECTIVES = Recorder()  # comm.py: (kind, bytes sent)
BLOCKS = Recorder()       # masks.py: (a kernel ran at this ring step, (query, key) pairs it computed)
