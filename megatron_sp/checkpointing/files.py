"""The on-disk side of checkpoints: names, atomic writes, the tracker, and checking a directory.

See save_load.py for the format.  Everything here works on paths only (no model),
so tools (generate_text.py) can validate and read a checkpoint without a process group.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import zlib

FORMAT_VERSION = 2  # 2: torch_dist or torch format, with checksums; 1: torch format without
READABLE_VERSIONS = (1, 2)
TRACKER = "latest_checkpointed_iteration.txt"
METADATA = "metadata.json"
MODEL_FILE = "model_optim.pt"


class CheckpointError(ValueError):
    """A missing, incomplete, corrupt or incompatible checkpoint; the message names the path and the fix."""


def iter_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def _dist():
    """``torch.distributed`` when a process group can exist (torch imported), else None: this module
    imports no torch, so the flag contract can read a checkpoint's metadata (--use-checkpoint-args)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def _global_rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist is not None else 0


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    try:
        fsync_file(path)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


def torch_save(obj, path: str) -> None:
    import torch
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def commit_checkpoint(tmp: str, meta: dict, save_dir: str, iteration: int, subdirs=(),
                      before_tracker=None) -> str:
    """Make the written checkpoint directory ``tmp`` (``iter_NNNNNNN.tmp``) the latest, the one
    commit sequence of every checkpoint (training saves and weights-only writes): ``metadata.json``
    last inside it (it marks the directory complete), fsync of it, of ``subdirs`` and of the
    directory, rename to the final name (replacing a stale one of the same iteration), fsync of
    ``save_dir``, then the tracker.  A crash at any point leaves the previous checkpoint the latest.
    ``before_tracker``: called between the rename and the tracker (fault injection).  Returns the
    final path."""
    with open(os.path.join(tmp, METADATA), "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    for sub in subdirs:
        fsync_dir(os.path.join(tmp, sub))
    fsync_dir(tmp)
    final = tmp[:-len(".tmp")]
    if os.path.exists(final):  # a checkpoint of this iteration the tracker no longer points at
        stale = final + ".old.tmp"
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.rename(tmp, final)
    fsync_dir(save_dir)
    if before_tracker is not None:
        before_tracker()
    write_text_atomic(os.path.join(save_dir, TRACKER), f"{iteration}\n")
    return final


def maybe_fault(iteration: int, point: str) -> None:
    """Fault injection for tests: ``MEGATRON_SP_CHECKPOINT_FAULT="<iteration>:<rank>:<point>"``.

    Points: ``files`` (SIGKILL after this rank's files are written, before the rename),
    ``rename`` (SIGKILL after the rename, before the tracker update), ``enospc`` (the
    rank's write fails as on a full disk)."""
    spec = os.environ.get("MEGATRON_SP_CHECKPOINT_FAULT")
    if not spec:
        return
    it, victim, where = spec.split(":")
    if int(it) == iteration and int(victim) == _global_rank() and where == point:
        if point == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.kill(os.getpid(), signal.SIGKILL)


def crc32_file(path: str, block: int = 1 << 20) -> str:
    """CRC-32 of a file's bytes as 8 hex digits, streamed through one 1 MiB buffer."""
    crc, buf = 0, bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                return f"{crc & 0xFFFFFFFF:08x}"
            crc = zlib.crc32(view[:n], crc)


def verify_checksums(path: str, checksums: dict, mine=lambda i: True) -> str | None:
    """The first mismatch among the files ``mine(i)`` selects (i: index in sorted order), or None."""
    for i, rel in enumerate(sorted(checksums)):
        if not mine(i):
            continue
        got = crc32_file(os.path.join(path, rel))
        if got != checksums[rel]:
            return (f"checkpoint {path} is corrupt: {rel} has CRC-32 {got}, {checksums[rel]} was written; "
                    "use an earlier iter_* directory")
    return None


def free_bytes(path: str) -> int | None:
    while path and not os.path.isdir(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or ".")
        return st.f_bavail * st.f_frsize
    except OSError:
        return None


def list_files(root: str) -> dict:
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            files[os.path.relpath(full, root)] = os.path.getsize(full)
    return files


def complete_iterations(save_dir: str) -> list:
    out = []
    for name in os.listdir(save_dir):
        if name.startswith("iter_") and name[5:].isdigit() and os.path.isfile(
                os.path.join(save_dir, name, METADATA)):
            out.append(int(name[5:]))
    return sorted(out)


def prune(save_dir: str, keep: int, current: int) -> None:
    done = [i for i in complete_iterations(save_dir) if i <= current]
    for it in done[:-keep] if keep < len(done) else []:
        if it != current:  # rename first (atomic), so a kill mid-delete leaves only a *.tmp to clean up
            doomed = os.path.join(save_dir, iter_dir_name(it))
            os.rename(doomed, doomed + ".old.tmp")
            shutil.rmtree(doomed + ".old.tmp", ignore_errors=True)


def read_tracker(load_dir: str) -> int | None:
    """The iteration in the tracker file, ``None`` when there is no tracker (nothing saved yet)."""
    path = os.path.join(load_dir, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"tracker file {path} holds {text!r}, not an iteration number; fix or delete it "
                              f"(the checkpoints are the {iter_dir_name(0)[:5]}* directories next to it)") from None


def _probe_writable(save_dir: str) -> None:
    """Create ``save_dir`` (as the first save would) and a file in it, then remove the file."""
    os.makedirs(save_dir, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=f".write_probe.{os.getpid()}.", dir=save_dir)
    os.close(fd)
    os.remove(probe)


def check_save_writable(save_dir: str) -> None:
    """Every rank writes files under ``--save`` at each save: each probes it now, and if any
    rank cannot write, every rank raises the same line naming that rank (collective when
    ``torch.distributed`` is initialised)."""
    try:
        _probe_writable(save_dir)
        mine = None
    except OSError as exc:
        mine = f"{type(exc).__name__}: {exc}"
    failures = [mine]
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        failures = [None] * dist.get_world_size()
        dist.all_gather_object(failures, mine)
    bad = [(r, f) for r, f in enumerate(failures) if f]
    if bad:
        rank, cause = bad[0]
        where = f" on rank {rank}" + (f" (and {len(bad) - 1} other ranks)" if len(bad) > 1 else "") \
            if len(failures) > 1 else ""
        raise CheckpointError(f"--save {save_dir} is not writable{where} ({cause}); every rank writes its "
                              "files there at each save: give a directory all ranks can write")


def check_save_dir(save_dir: str, start_iteration: int) -> None:
    """Refuse, before the first iteration, a ``--save`` that cannot be written (:func:`check_save_writable`)
    and a run whose saves would replace complete checkpoints it did not resume from.

    E.g. the same command rerun without ``--load``, or ``--finetune`` saving into the
    directory of the checkpoint it starts from: the tracker is ahead of the run.
    """
    check_save_writable(save_dir)
    tracked = read_tracker(save_dir) if os.path.isdir(save_dir) else None
    if tracked is not None and tracked > start_iteration:
        raise CheckpointError(
            f"--save {save_dir} already holds checkpoints up to iteration {tracked} ({TRACKER}) and this run "
            f"starts at iteration {start_iteration}, so its saves would replace them. Resume with --load "
            f"{save_dir}, give another --save directory, or delete {os.path.join(save_dir, TRACKER)} to "
            "start over on purpose")


def checkpoint_dir(load_dir: str, iteration: int) -> str:
    """Path of a *complete* checkpoint, else a :class:`CheckpointError` saying what is wrong."""
    path = os.path.join(load_dir, iter_dir_name(iteration))
    if not os.path.isdir(path):
        tmp = " (only a half-written " + os.path.basename(path) + ".tmp exists)" if os.path.isdir(path + ".tmp") else ""
        raise CheckpointError(f"{os.path.join(load_dir, TRACKER)} points at iteration {iteration} but "
                              f"{path} does not exist{tmp}; point the tracker at a complete iter_* directory")
    meta_path = os.path.join(path, METADATA)
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"checkpoint {path} is incomplete: {METADATA} (written last) is missing; "
                              f"it was not finished, use an earlier iter_* directory")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {METADATA} cannot be read ({exc})") from None
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has format version {meta.get('format_version')}, this code "
                              f"reads versions {READABLE_VERSIONS}")
    for rel, size in meta.get("files", {}).items():
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            raise CheckpointError(f"checkpoint {path} is incomplete: {rel} is missing")
        if os.path.getsize(full) != size:
            raise CheckpointError(f"checkpoint {path} is corrupt: {rel} has {os.path.getsize(full)} bytes, "
                                  f"{size} were written")
    return path


def read_metadata(path: str) -> dict:
    with open(os.path.join(path, METADATA)) as f:
        return json.load(f)


def ckpt_format(meta: dict) -> str:
    """``torch_dist`` or ``torch`` (checkpoints of format version 1 are all ``torch``)."""
    return meta.get("ckpt_format", "torch")


def jsonable(value):
    """A flag's value as metadata.json stores it (lists stay lists; anything else not JSON: its str)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)
