"""Files written whole or not at all, locks against a second writer, and clean-up after kills.

No torch: a command line may use this at start-up.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

__all__ = [
    "ExclusiveLock",
    "alive",
    "hidden_sibling",
    "open_hdf5",
    "refuse_overwriting",
    "remove_stale_temporaries",
    "removed_on_failure",
    "temporary_path",
    "write_text",
    "written",
]

NAME_MAX = 255
"""The longest file name, in bytes, of the usual file systems (ext4, XFS, APFS, NTFS)."""
_SUFFIX_ROOM = 32
"""Bytes kept free for what a helper appends to a name (``.PID.tmp``, ``.lock``, ``.blocks``)."""


def _stem(name: str) -> str:
    """``name``, or, when a suffix would push it past NAME_MAX, its first bytes and a hash of
    the whole: a legal 250-byte output name still gets legal helper files, one per name."""
    raw = name.encode()
    if len(raw) + 1 + _SUFFIX_ROOM <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    head = raw[: NAME_MAX - 1 - _SUFFIX_ROOM - 13].decode(errors="ignore")
    return f"{head}~{digest}"


def hidden_sibling(path: Path, suffix: str) -> Path:
    """``.NAME.SUFFIX`` beside ``path`` (a lock, a folder of blocks), with NAME shortened by a
    hash when the whole would be too long a file name. ``suffix`` is at most 32 bytes."""
    path = Path(path)
    if len(suffix.encode()) > _SUFFIX_ROOM:
        raise ValueError(f"suffix {suffix!r} is longer than {_SUFFIX_ROOM} bytes")
    return path.with_name(f".{_stem(path.name)}.{suffix}")


def temporary_path(path: Path) -> Path:
    """The temporary sibling of ``path`` that this process writes before renaming it onto
    ``path``: ``.NAME.PID.tmp`` (the PID lets a later run tell a dead writer's leftovers)."""
    return hidden_sibling(path, f"{os.getpid()}.tmp")


@contextlib.contextmanager
def written(path: Path) -> Iterator[Path]:
    """Write to the yielded temporary path; when the block succeeds it replaces ``path``
    (:func:`os.replace`, atomic on one file system), when it fails it is removed. A kill
    mid-write leaves the previous ``path`` and a temporary that :func:`remove_stale_temporaries`
    clears later."""
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with written(Path(path)) as tmp:
        tmp.write_text(text)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (another user's process counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Delete the ``.NAME.PID.tmp`` files in ``folder`` (of ``name``, or of every name) whose
    process no longer runs: what a kill during a write leaves. A live process's are kept;
    returns the files removed."""
    removed = []
    pattern = "*" if name == "*" else glob.escape(_stem(name))
    for tmp in Path(folder).glob(f".{pattern}.*.tmp"):
        pid = tmp.name[: -len(".tmp")].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


class ExclusiveLock:
    """An exclusive, non-blocking ``flock`` on ``lockfile`` for the duration of a ``with``
    block: a second process asking for it gets ``refusal()`` raised at once, instead of
    interleaving its writes with the first's. The lock file is removed on exit. Without
    ``fcntl`` (not POSIX) nothing is locked."""

    def __init__(self, lockfile: Path, refusal: Callable[[], Exception]) -> None:
        self.lockfile, self.refusal, self.handle = Path(lockfile), refusal, None

    def __enter__(self) -> ExclusiveLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        self.lockfile.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.lockfile, "w")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            self.handle = None
            raise self.refusal() from None
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.lockfile.unlink(missing_ok=True)
            self.handle.close()
            self.handle = None


def open_hdf5(path: Path, error: type[Exception] = ValueError):
    """``h5py.File(path, "r")``, or ``error`` in one line naming the file when it is missing or
    is not HDF5."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error(f"{path}: not a readable HDF5 file ({e})") from None


def refuse_overwriting(
    outputs: Mapping[str, str | os.PathLike], inputs: Mapping[str, str | os.PathLike | None]
) -> None:
    """Refuse, before anything is written, an output that is (through symlinks too) one of the
    input files, or lies inside an input run or dataset directory: a
    :class:`lenscore.config.SettingError` naming the output's key. ``outputs`` and ``inputs`` map
    the names of the settings (keywords, or a command's options) to paths; None, and words such
    as 'sie' that name no existing file, are skipped."""
    from lenscore.config import SettingError

    resolved = {name: Path(v).resolve() for name, v in inputs.items() if v is not None and Path(v).exists()}
    for out_name, out in outputs.items():
        target = Path(out).resolve()
        for name, src in resolved.items():
            if target == src or src.is_dir() and src in target.parents:
                where = "is" if target == src else "lies inside"
                message = f"{out} {where} the input {name} {inputs[name]}: it would be overwritten; choose another path"
                raise SettingError(message, param=out_name)


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike | None) -> Iterator[None]:
    """On an exception, remove what the block created at ``path`` (a run directory or a dataset's
    block directory), so a refused job leaves nothing half-made behind. A path that existed
    before is never touched, nor one that holds work worth resuming (a checkpoint, an HDF5 file,
    a finished block)."""
    if path is None:
        yield
        return
    path = Path(path)
    blocks = hidden_sibling(path, "blocks")
    created, new_blocks = not path.exists(), not blocks.exists()
    try:
        yield
    except Exception:  # an interrupt (Ctrl-C) keeps what there is, to resume from
        worth_keeping = path.is_dir() and (any(path.rglob("checkpoint.pt")) or any(path.rglob("*.h5")))
        if created and path.is_dir() and not worth_keeping:
            shutil.rmtree(path, ignore_errors=True)
        if new_blocks and blocks.is_dir() and not any(blocks.glob("block-*.h5")):
            shutil.rmtree(blocks, ignore_errors=True)
        raise
