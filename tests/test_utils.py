"""Atomic writes: the umask decides the mode, stale temp files are found, a full disk is reported."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile

import pytest
import torch

from chestdx.utils import (
    _ErrorKeepingWriter,
    atomic_open,
    atomic_torch_save,
    current_umask,
    fix_tempdir_mode,
    is_write_error,
    remove_stale_temp_files,
    write_json,
)


@pytest.fixture
def umask():
    """Set the umask for one test, restore it after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    for value in (0o022, 0o077, 0o002):
        umask(value)
        assert current_umask() == value
        assert current_umask() == value  # unchanged by reading


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_json(tmp_path / "report.json", {"a": 1})
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "model.ckpt")
    assert _mode(tmp_path / "report.json") == expected
    assert _mode(tmp_path / "model.ckpt") == expected


def test_replacing_a_0600_file_uses_the_umask_rule(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "predictions.csv"
    p.write_text("old")
    os.chmod(p, 0o600)
    with atomic_open(p, "w") as f:
        f.write("new")
    assert p.read_text() == "new" and _mode(p) == 0o644


def test_fix_tempdir_mode(tmp_path, umask):
    umask(0o022)
    d = tempfile.mkdtemp(dir=tmp_path)
    assert _mode(d) == 0o700
    fix_tempdir_mode(d)
    assert _mode(d) == 0o755


def test_remove_stale_temp_files_only_takes_atomic_open_leftovers(tmp_path):
    keep = [".hidden", "last.ckpt", ".last.ckpt.tmp", "x.tmp", ".a.short.tmp"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    fd, stale = tempfile.mkstemp(prefix=".last.ckpt.", suffix=".tmp", dir=tmp_path)  # what atomic_open makes
    os.close(fd)
    (tmp_path / ".history.json.ab_cd123.tmp").write_text("{")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted([os.path.basename(stale), ".history.json.ab_cd123.tmp"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_a_full_disk_inside_torch_save_is_an_enospc_oserror(tmp_path, monkeypatch):
    """torch.save reports a failed write as a RuntimeError; atomic_torch_save re-raises the OSError."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    dev_full = open("/dev/full", "wb")  # buffered, as atomic_open's handle is
    w = _ErrorKeepingWriter(dev_full)
    with pytest.raises(RuntimeError):  # what torch.save alone says
        torch.save({"a": torch.zeros(100_000)}, w)
    assert isinstance(w.error, OSError) and w.error.errno == errno.ENOSPC
    with contextlib.suppress(OSError):
        dev_full.close()

    p = tmp_path / "last.ckpt"
    atomic_torch_save({"a": torch.ones(1)}, p)
    class FullDisk:
        """The temp file's handle on a disk that fills up after 4 kB: writes fail, closing does not."""

        def __init__(self, fd, *args, **kwargs):
            self.fd, self.written = fd, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return len(data)

        def flush(self):
            pass

        def fileno(self):
            return self.fd

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            os.close(self.fd)

    full_fdopen = FullDisk
    monkeypatch.setattr(os, "fdopen", full_fdopen)
    with pytest.raises(OSError) as info:
        atomic_torch_save({"a": torch.zeros(100_000)}, p)
    assert info.value.errno == errno.ENOSPC and is_write_error(info.value)
    monkeypatch.undo()
    assert torch.load(p, weights_only=True)["a"].tolist() == [1.0]  # the previous file is intact
    assert [q.name for q in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left
