"""P ranks in one process: the CP modes' own code (ring, RSA, Ulysses, USP) on one device.

Each simulated rank is a thread running the real attention code; only the transport is replaced.
:class:`ThreadWorld` stands in for ``torch.distributed`` inside ``sequence_parallel/comm.py`` (the
one module every CP byte goes through): ``batch_isend_irecv`` of ``P2POp`` s, ``all_to_all_single``,
``all_gather`` and ``get_world_size``, with messages passed between threads in the order each pair
of ranks posts them, as NCCL and gloo match them.  Nothing of the algorithms is re-implemented.

    world = ThreadWorld(4)
    with world.installed():
        outs = world.run(lambda rank: attention_of(rank))   # one call per simulated rank, in threads
"""
from __future__ import annotations

import contextlib
import threading
from collections import defaultdict


class ThreadGroup:
    """A process group of simulated global ranks ``members`` (this thread's place in it by rank)."""

    def __init__(self, world: "ThreadWorld", members):
        self.world, self.members = world, list(members)

    @property
    def size(self) -> int:
        return len(self.members)


class _Recv:
    def __init__(self, world, key, k, buf):
        self.world, self.key, self.k, self.buf = world, key, k, buf

    def wait(self):
        with self.world.cv:
            self.world.cv.wait_for(lambda: len(self.world.boxes[self.key]) > self.k, timeout=self.world.timeout)
            if len(self.world.boxes[self.key]) <= self.k:
                raise RuntimeError(f"simulated recv {self.key} #{self.k} timed out")
            self.buf.copy_(self.world.boxes[self.key][self.k])


class ThreadWorld:
    """The ``torch.distributed`` subset comm.py uses, for ``size`` ranks running in threads."""
    isend, irecv = "isend", "irecv"

    def __init__(self, size: int, timeout: float = 120.0):
        self.size, self.timeout = size, timeout
        self.local = threading.local()
        self.cv = threading.Condition()
        self.boxes = defaultdict(list)      # (src, dst) -> tensors sent, in order
        self.posted = defaultdict(int)      # (src, dst) -> receives posted by dst so far
        self.deposits = defaultdict(dict)   # (group members, call number) -> {member index: tensor}
        self.calls = defaultdict(int)       # (group members, rank) -> collective calls so far

    # --- the torch.distributed surface ---------------------------------------------------
    def P2POp(self, op, tensor, peer, group=None):  # noqa: N802 (torch's name)
        return op, tensor, peer

    def batch_isend_irecv(self, ops):
        me, works = self.local.rank, []
        for op, tensor, peer in ops:
            if op == self.isend:
                with self.cv:
                    self.boxes[(me, peer)].append(tensor.clone())
                    self.cv.notify_all()
            else:
                with self.cv:
                    k = self.posted[(peer, me)]
                    self.posted[(peer, me)] += 1
                works.append(_Recv(self, (peer, me), k, tensor))
        return works

    def get_world_size(self, group=None) -> int:
        return group.size if isinstance(group, ThreadGroup) else self.size

    def _exchange(self, group: ThreadGroup, tensor):
        """Every member's ``tensor``, in member order, once all members have given theirs."""
        me = self.local.rank
        idx = group.members.index(me)
        with self.cv:
            n = self.calls[(tuple(group.members), me)]
            self.calls[(tuple(group.members), me)] += 1
            slot = self.deposits[(tuple(group.members), n)]
            slot[idx] = tensor.clone()
            self.cv.notify_all()
            self.cv.wait_for(lambda: len(slot) == group.size, timeout=self.timeout)
            if len(slot) < group.size:
                raise RuntimeError(f"simulated collective over {group.members} timed out")
            return [slot[j] for j in range(group.size)], idx

    def all_to_all_single(self, recv, send, group=None):
        parts, idx = self._exchange(group, send)  # send: [G, ...], part j for member j
        for j, part in enumerate(parts):
            recv[j].copy_(part[idx])

    def all_gather(self, outs, tensor, group=None):
        parts, _ = self._exchange(group, tensor)
        for out, part in zip(outs, parts):
            out.copy_(part)

    # --- running ranks ----------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self):
        """comm.py talks to this world instead of torch.distributed while inside."""
        from megatron_sp.sequence_parallel import comm
        real, comm.dist = comm.dist, self
        try:
            yield self
        finally:
            comm.dist = real

    def run(self, fn) -> list:
        """``[fn(0), ..., fn(size - 1)]``, each rank in its own thread; the first failure is raised."""
        results, errors = [None] * self.size, [None] * self.size

        def body(rank):
            self.local.rank = rank
            try:
                results[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                errors[rank] = exc
                with self.cv:
                    self.cv.notify_all()

        threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout * 2)
        for err in errors:
            if err is not None:
                raise err
        if any(t.is_alive() for t in threads):
            raise RuntimeError("a simulated rank did not finish")
        return results
