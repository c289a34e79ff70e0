import os
import stat

import pytest

from zoo import io


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the previous one after it."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_new_files_get_the_mode_open_would_give_under_the_current_umask(tmp_path, umask, mask):
    umask(mask)
    reference = tmp_path / "by-open"
    reference.write_bytes(b"x")
    io.write_bytes(tmp_path / "atomic", b"x")
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == stat.S_IMODE(reference.stat().st_mode) == 0o666 & ~mask


def test_the_directory_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    real_fsync, synced = os.fsync, []

    def spy(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        synced.append(("dir" if is_dir else "file", (tmp_path / "out.json").exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    io.write_json(tmp_path / "out.json", {"a": 1})
    # The file's data first (before it has its name), then its directory (after the rename).
    assert synced == [("file", False), ("dir", True)]


def test_a_failing_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old contents")

    def write_half_then_fail(f):
        f.write(b"new, half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(path, write_half_then_fail)
    assert path.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_write_json_replaces_the_file_whole(tmp_path):
    path = tmp_path / "config.json"
    io.write_json(path, {"first": list(range(1000))})
    io.write_json(path, {"second": 2})
    assert path.read_text() == '{\n  "second": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
