"""Small shared helpers: atomic writes, seeding, JSON that understands numpy."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_UMASK_LOCK = threading.Lock()

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
"""``OSError`` numbers that mean "this folder cannot be written now" (disk full, quota, read-only)."""

_TMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
"""Names of :func:`atomic_open`'s temporary files: ``.<name>.<8 random characters>.tmp``."""


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc/self/status`` says it (Linux);
    elsewhere by setting and restoring it (under a lock, but racy against other threads creating
    files at that instant)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def umask_mode(directory: bool = False) -> int:
    """The mode ``open`` / ``mkdir`` would give a new file (0666) or folder (0777) under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def fix_tempdir_mode(path: str | Path) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (always 0700) the mode ``mkdir`` would have given
    it under the umask, for a temporary folder that becomes an output."""
    os.chmod(path, umask_mode(directory=True))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files that an :func:`atomic_open` killed mid-write left in
    ``folder`` (not recursive); returns what was removed. Call it only where no other process is
    writing into ``folder`` (e.g. at the start of training, in the run folder)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if _TMP_RE.match(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def is_write_error(e: BaseException) -> bool:
    """Whether ``e`` says a folder cannot be written now (full disk, quota, read-only, no permission)."""
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` and rename it over ``path`` on success.

    A crash (or an exception inside the ``with`` block) leaves any existing ``path`` untouched; a
    process killed mid-write leaves a ``.NAME.XXXXXXXX.tmp`` file (see
    :func:`remove_stale_temp_files`). The file gets the mode a plain ``open`` would give it under
    the umask (``mkstemp`` alone makes it 0600), whatever the mode of a file it replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def as_float(value: Any) -> float:
    """``float(value)``, or NaN for None, booleans and anything not numeric."""
    if value is None or isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _finite(obj: Any) -> Any:
    """Replace NaN / inf floats by None, recursively, so the JSON stays strict."""
    if isinstance(obj, float) or isinstance(obj, np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def to_json(obj: Any, **kwargs: Any) -> str:
    """Strict ``json.dumps`` (NaN and inf become null) that accepts numpy values, tensors and paths."""
    return json.dumps(_finite(obj), default=_json_default, allow_nan=False, **kwargs)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(to_json(obj, indent=2))
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and rename."""
    import torch

    with atomic_open(path, "wb") as f:
        writer = _ErrorKeepingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            # torch reports a failed write (e.g. a full disk) as "[enforce fail ...] unexpected pos";
            # re-raise the OSError the file itself gave so callers can tell a full disk
            if writer.error is not None:
                raise writer.error from None
            raise


class _ErrorKeepingWriter:
    """A binary file wrapper that remembers the ``OSError`` its ``write`` raised (torch.save swallows it)."""

    def __init__(self, handle: IO[bytes]):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._handle.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
