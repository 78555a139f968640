"""``--ckpt-format torch_dist``: every rank writes its own pieces with torch.distributed.checkpoint.

DCP stores each tensor under its global name with its global shape, as a set of
chunks ``(offsets, sizes)``; a load asks for the chunks it needs and reads whatever
saved chunks overlap them, so any layout loads any other.  Our tensors are split in
ways a DTensor placement cannot say (TP chunks of SwiGLU's ``[gate; up]``, then FSDP2
rows), so each is handed to DCP as :class:`Pieces`, a small object that speaks DCP's
checkpointable protocol (``__create_write_items__``, ``__create_chunk_list__``,
``__get_tensor_shard__``) for a list of ``(view, offsets)``.

Worked example: fc1 ``[16, 4]`` at TP 2 without FSDP.  TP rank 0 gives DCP two chunks,
rows 0-3 and 8-11 (its gate and up halves), rank 1 rows 4-7 and 12-15; the DP and CP
replicas give the same chunks, and DCP's de-duplication keeps one writer per chunk,
spread over the ranks.  Loading at TP 1 asks for one chunk, rows 0-15, and DCP reads
the four saved ones into it.

Writing: every rank writes the chunks DCP assigned to it (``__<rank>_<n>.distcp``),
rank 0 writes DCP's ``.metadata``; no rank gathers anything.  :class:`RecordingWriter`
remembers which files a rank wrote, so the rank checksums its own files.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, MetadataIndex, TensorProperties,
                                                   TensorStorageMetadata)
from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType


class Pieces:
    """This rank's pieces ``[(view, offsets)]`` of a tensor of global shape ``size``, for DCP."""

    def __init__(self, size, pieces, dtype=None):
        self.global_size = torch.Size(size)
        self.pieces = [(v, torch.Size(o)) for v, o in pieces]
        self.dtype = dtype or (self.pieces[0][0].dtype if self.pieces else torch.float32)

    def size(self) -> torch.Size:  # DCP compares it with the saved size on load
        return self.global_size

    def __create_write_items__(self, fqn, obj):
        return [WriteItem(index=MetadataIndex(fqn, offsets), type=WriteItemType.SHARD,
                          tensor_data=TensorWriteData(
                              chunk=ChunkStorageMetadata(offsets=offsets, sizes=view.shape),
                              properties=TensorProperties(dtype=self.dtype), size=self.global_size))
                for view, offsets in self.pieces]

    def __create_chunk_list__(self):
        return [ChunkStorageMetadata(offsets=offsets, sizes=view.shape) for view, offsets in self.pieces]

    def __get_tensor_shard__(self, index):
        for view, offsets in self.pieces:
            if offsets == index.offset:
                return view
        raise ValueError(f"{index.fqn}: no piece at offset {tuple(index.offset)} on this rank")

    def staged(self) -> "Pieces":
        """A copy in host memory that training cannot change (for ``--async-save``)."""
        pin = torch.cuda.is_available()
        copies = []
        for view, offsets in self.pieces:
            c = torch.empty(view.shape, dtype=view.dtype, pin_memory=pin)
            copies.append((c.copy_(view), offsets))
        return Pieces(self.global_size, copies, self.dtype)


def _lookup(state_dict, index, fallback):
    obj = state_dict.get(index.fqn)
    return obj.__get_tensor_shard__(index) if isinstance(obj, Pieces) else fallback(index)


class _SavePlanner(DefaultSavePlanner):
    def lookup_object(self, index):
        return _lookup(self.state_dict, index, super().lookup_object)


class _LoadPlanner(DefaultLoadPlanner):
    def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
        # The default set-up first materialises meta tensors by walking the state dict, and that
        # walk drops objects it does not know (Pieces).  Ours holds no meta tensor: flatten only.
        self.original_state_dict = state_dict
        self.state_dict, self.mappings = flatten_state_dict(state_dict)
        self.metadata, self.is_coordinator = metadata, is_coordinator

    def lookup_tensor(self, index):
        return _lookup(self.state_dict, index, super().lookup_tensor)


class RecordingWriter(FileSystemWriter):
    """DCP's file writer that also remembers the files this rank wrote (for their checksums)."""

    def __init__(self, path: str):
        super().__init__(path, single_file_per_rank=True, thread_count=1, sync_files=True)
        self.written: list = []

    def write_data(self, plan, planner):
        fut = super().write_data(plan, planner)
        self.written = sorted({r.storage_data.relative_path for r in fut.wait()})
        return fut


class _NoStaging:
    """The state dict is staged already (:meth:`Pieces.staged`): hand it to the writer as is."""

    should_synchronize_after_execute = False

    def stage(self, state_dict):
        return state_dict

    def synchronize_staging(self):
        pass

    def close(self):
        pass


def state_dict(model_entries: dict, optimizer_entries: dict, staged: bool = False) -> dict:
    """The DCP state dict: ``{"model": {name: Pieces}, "optimizer": {name: {key: Pieces | scalar}}}``."""
    def wrap(shape, pieces):
        p = Pieces(shape, pieces)
        return p.staged() if staged else p

    def scalar(t):
        return t.detach().to("cpu", copy=True) if staged else t

    sd = {"model": {n: wrap(shape, pieces) for n, (_, shape, pieces) in model_entries.items()}}
    if optimizer_entries:
        sd["optimizer"] = {n: {k: wrap(*v) if isinstance(v, tuple) else scalar(v) for k, v in entry.items()}
                           for n, entry in optimizer_entries.items()}
    return sd


# What a DCP save or load raises: DCP gathers the ranks' failures into a CheckpointException, which
# derives from BaseException, so ``except Exception`` alone lets it through.
DCP_ERRORS = (Exception, CheckpointException)


def first_failure(exc: BaseException) -> BaseException:
    """The first rank's own exception inside DCP's CheckpointException (else ``exc``)."""
    failures = getattr(exc, "failures", None) or {}
    for failure in failures.values():
        return failure[0] if isinstance(failure, tuple) else failure
    return exc


def _no_dist() -> bool:
    return not dist.is_initialized()


def _quiet(fn, *args, **kwargs):
    """Run a DCP call; one process without a group is meant (``no_dist``), not worth DCP's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, **kwargs)


def save(sd: dict, path: str, group, async_save: bool = False):
    """Write ``sd`` under ``path``; returns ``(writer, future or None)``.  Collective over ``group``."""
    writer = RecordingWriter(path)
    if async_save:
        fut = _quiet(dcp.async_save, sd, storage_writer=writer, planner=_SavePlanner(), process_group=group,
                             async_stager=_NoStaging(), no_dist=_no_dist())
        return writer, fut
    _quiet(dcp.save, sd, storage_writer=writer, planner=_SavePlanner(), process_group=group, no_dist=_no_dist())
    return writer, None


def saved_keys(path: str) -> dict:
    """``{flattened key: global shape or None}`` of what a torch_dist checkpoint holds (no process group)."""
    md = FileSystemReader(path).read_metadata()
    return {k: (tuple(v.size) if isinstance(v, TensorStorageMetadata) else None)
            for k, v in md.state_dict_metadata.items()}


def load(sd: dict, path: str, group) -> None:
    """Fill every tensor of ``sd`` (Pieces and plain tensors) in place.  Collective over ``group``."""
    _quiet(dcp.load, sd, storage_reader=FileSystemReader(path), planner=_LoadPlanner(), process_group=group,
             no_dist=_no_dist())


def read_full_model(path: str) -> dict:
    """``{name: full tensor}`` of the model, on one process, without a process group."""
    keys = saved_keys(path)
    md = FileSystemReader(path).read_metadata()
    model = {}
    for key, shape in keys.items():
        if key.startswith("model.") and shape is not None:
            dtype = md.state_dict_metadata[key].properties.dtype
            model[key[len("model."):]] = torch.empty(shape, dtype=dtype)
    _quiet(dcp.load, {"model": model}, storage_reader=FileSystemReader(path), planner=_LoadPlanner(), no_dist=True)
    return model
