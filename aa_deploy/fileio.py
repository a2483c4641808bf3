"""Atomic file writes: a failed or interrupted write never leaves a half-written file behind.

Folders are written into hidden siblings named after their owner's process (``owned_temp_dir``) and
published by one rename, so a killed process leaves at most such a sibling, which a later process
recognises as stale (its PID is gone and it is old) and removes (``remove_stale_leftovers``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract.layout import SCRATCH_SUFFIX, STAGING_SUFFIX, TRASH_SUFFIX

logger = logging.getLogger("aa_deploy.fileio")

# A leftover is removed only when its owner is gone *and* it is this old: a process on another machine
# (a shared network folder) has a PID we cannot check, and an hour is far beyond any publish step.
LEFTOVER_GRACE_SECONDS = 3600.0


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Let ``writer`` fill a temporary file (e.g. safetensors' ``save_file``), then publish it."""
    with atomic_path(path) as tmp:
        writer(tmp)


def owned_temp_dir(parent: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """Create an empty hidden working folder ``<prefix><pid>-<random><suffix>`` in ``parent``.

    The PID in the name is what lets ``remove_stale_leftovers`` tell a killed process's folder from
    one that is still being written.
    """
    Path(parent).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", suffix=suffix, dir=parent))


def _owned_name(output: Path, suffix: str) -> Path:
    """A fresh (not created) sibling path of ``output`` in ``owned_temp_dir``'s naming scheme."""
    return output.with_name(f".{output.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def publish_new_folder(staging: str | os.PathLike, output: str | os.PathLike) -> None:
    """Publish ``staging`` as ``output`` only if no other folder is there (an empty one may be).

    One ``rename``: POSIX replaces an empty directory atomically and refuses a non-empty one
    (ENOTEMPTY/EEXIST), so of two processes publishing to the same path exactly one wins and the
    other gets ``FileExistsError``; the winner's folder is never touched.
    """
    staging, output = Path(staging), Path(output)
    try:
        os.rename(staging, output)
    except OSError as exc:
        if isinstance(exc, FileExistsError) or exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise FileExistsError(
                errno.EEXIST, f"{output} appeared while this folder was being written: choose another "
                "output or pass --overwrite", str(output),
            ) from exc  # fmt: skip
        raise


def replace_folder(staging: str | os.PathLike, output: str | os.PathLike, *, attempts: int = 100) -> None:
    """Publish a fully written ``staging`` folder as ``output``, replacing any previous one.

    The old folder is moved aside first and deleted only after the new one is in place, so a crash at
    any point leaves either the old or the new folder under ``output``, never a mix. When another
    process publishes to ``output`` at the same moment, the last one to rename wins; no step fails.
    """
    staging, output = Path(staging), Path(output)
    for _ in range(attempts):
        trash = None
        if output.exists():
            trash = _owned_name(output, TRASH_SUFFIX)
            try:
                os.replace(output, trash)
            except FileNotFoundError:  # another process moved it aside first
                trash = None
        try:
            os.replace(staging, output)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                if trash is not None:  # put the old folder back rather than lose it
                    with contextlib.suppress(OSError):
                        os.rename(trash, output)
                raise
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            continue  # another process published in between: move that one aside and try again
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return
    raise FileExistsError(errno.EEXIST, f"{output} kept being replaced by other processes", str(output))


@dataclass(frozen=True)
class Leftover:
    """A working folder or file of a process that was killed before it could clean up."""

    path: Path
    pid: int | None
    age_seconds: float
    size_bytes: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return True  # cannot tell: keep its folder
    return True


def _size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def remove_stale_leftovers(
    parent: str | os.PathLike,
    pattern: re.Pattern[str],
    *,
    grace_seconds: float = LEFTOVER_GRACE_SECONDS,
    now: float | None = None,
) -> list[Leftover]:
    """Remove the entries of ``parent`` whose names match ``pattern`` and whose owner is gone.

    ``pattern``'s group ``pid`` is the owning process. An entry is removed when that process no longer
    runs and the entry has not changed for ``grace_seconds``; each removal is logged with its size.
    Entries of older versions (no PID in the name) are only reported: a live process may own them.
    Returns what was removed.
    """
    parent = Path(parent)
    now = time.time() if now is None else now
    removed: list[Leftover] = []
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return removed
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        path = parent / name
        try:
            age = now - path.lstat().st_mtime
        except OSError:  # removed meanwhile
            continue
        pid_text = match.groupdict().get("pid")
        pid = int(pid_text) if pid_text else None
        if age < grace_seconds or (pid is not None and _pid_alive(pid)):
            continue
        leftover = Leftover(path=path, pid=pid, age_seconds=age, size_bytes=_size(path))
        if pid is None:
            logger.warning(
                "%s looks like the leftover of an interrupted aa-deploy run (%.1f MB, %.1f h old); "
                "delete it by hand if no aa-deploy process is using it",
                path, leftover.size_bytes / 1e6, age / 3600,
            )  # fmt: skip
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            logger.warning(
                "removed %s, left by process %d which no longer runs (%.1f MB, %.1f h old)",
                path, pid, leftover.size_bytes / 1e6, age / 3600,
            )  # fmt: skip
            removed.append(leftover)
    return removed


def leftover_pattern(prefix: str, suffixes: Iterable[str]) -> re.Pattern[str]:
    """The names ``owned_temp_dir(prefix=..., suffix=one of suffixes)`` gives (PID in group ``pid``),
    and those plain ``tempfile.mkdtemp`` gave before the PID was recorded (``pid`` is None).

    ``prefix`` may itself be a regular expression (e.g. ``\\..+\\.`` for any output name).
    """
    ends = "|".join(re.escape(s) for s in sorted(suffixes, key=len, reverse=True))
    return re.compile(rf"{prefix}(?:(?P<pid>\d+)-)?[A-Za-z0-9_]{{8}}(?:{ends})")


# The hidden siblings a folder's writer leaves beside its output when killed (staging, scratch, trash).
SIBLING_LEFTOVERS = leftover_pattern(r"\..+\.", (STAGING_SUFFIX, STAGING_SUFFIX + SCRATCH_SUFFIX, TRASH_SUFFIX))


def staging_dir_for(output: str | os.PathLike) -> Path:
    """A fresh staging folder beside ``output`` (published later by one rename onto it)."""
    output = Path(output)
    return owned_temp_dir(output.parent, f".{output.name}.", STAGING_SUFFIX)
