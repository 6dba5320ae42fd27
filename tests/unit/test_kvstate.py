"""Saved conversation caches on a real directory: atomic writes, crash leftovers, discard races."""

import ctypes
import os
import subprocess
import sys

import pytest

from tandem.runtime.engine import kvstate
from tandem.runtime.engine.kvstate import KVStateStore


@pytest.fixture()
def store(tmp_path):
    return KVStateStore(tmp_path, binding="b1", cap_bytes=10_000)


def test_a_state_comes_back_in_a_buffer_llama_cpp_can_read_in_place(store):
    store.save("conv", [1, 2, 3], memoryview(b"state-bytes"))
    saved = store.load("conv")
    assert saved.tokens == [1, 2, 3]
    assert isinstance(saved.data, ctypes.Array) and bytes(saved.data) == b"state-bytes"
    assert [p.name for p in store.directory.iterdir() if p.suffix == ".tmp"] == []


def test_damaged_or_foreign_files_are_discarded(tmp_path, store):
    path = store.save("conv", [1, 2], b"x" * 100)
    raw = path.read_bytes()
    for damaged in (raw[:-1], raw[:20], b"junk", raw[:-5] + b"yyyyy"):
        path.write_bytes(damaged)
        assert store.load("conv") is None and not path.exists()
    store.save("conv", [1, 2], b"x" * 100)
    assert KVStateStore(tmp_path, binding="other", cap_bytes=10_000).load("conv") is None


def test_temporary_files_of_a_dead_writer_are_removed_at_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    left = tmp_path / f".abc.{dead_pid}.1234abcd.tmp"
    left.write_bytes(b"x" * 500)
    old_style = tmp_path / "abc.tmp"
    old_style.write_bytes(b"x")
    alive = tmp_path / f".def.{os.getppid()}.1234abcd.tmp"  # a live process may still be writing it
    alive.write_bytes(b"y")
    store = KVStateStore(tmp_path, binding="b1", cap_bytes=10_000)
    assert store.removed_temps == 2
    assert not left.exists() and not old_style.exists() and alive.exists()
    assert store.total_bytes() == 1  # what is on the disk counts against the cap


def test_a_discard_during_a_save_wins(store, monkeypatch):
    real_fsync = os.fsync
    calls = []

    def fsync_then_discard(fd):
        real_fsync(fd)
        if not calls:
            calls.append(fd)
            store.discard("conv")  # the conversation is deleted while its cache is being written

    monkeypatch.setattr(kvstate.os, "fsync", fsync_then_discard)
    assert store.save("conv", [1], b"data") is None
    assert not store.path_for("conv").exists()
    assert list(store.directory.iterdir()) == []
    assert store.save("conv", [1], b"data") is not None  # a later save is not refused


def test_a_failed_write_leaves_no_temporary_file(store, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kvstate.os, "fsync", full_disk)
    with pytest.raises(OSError):
        store.save("conv", [1], b"data")
    assert list(store.directory.iterdir()) == []


def test_the_cap_removes_least_recently_used(tmp_path):
    store = KVStateStore(tmp_path, binding="b1", cap_bytes=600)
    for key in ("a", "b", "c"):
        store.save(key, [1], b"x" * 150)
        os.utime(store.path_for(key), ns=(0, {"a": 1, "b": 2, "c": 3}[key] * 10**9))
    store.save("d", [1], b"x" * 150)
    assert store.load("a") is None and store.load("d") is not None
    assert store.save("huge", [1], b"x" * 1000) is None and not store.path_for("huge").exists()


def test_a_leftover_with_this_processes_pid_is_removed_but_not_its_own_writes(tmp_path):
    leftover = tmp_path / f".abc.{os.getpid()}.deadbeef12.tmp"  # a crashed process that had our pid
    leftover.write_bytes(b"x")
    mine = tmp_path / f".def.{os.getpid()}.{kvstate._RUN}ab12.tmp"  # this process writing right now
    mine.write_bytes(b"y")
    KVStateStore(tmp_path, binding="b1", cap_bytes=10_000)
    assert not leftover.exists() and mine.exists()


def test_a_changed_token_id_makes_the_file_unusable(store):
    path = store.save("conv", [11, 22, 33], b"s" * 64)
    raw = bytearray(path.read_bytes())
    at = raw.find((22).to_bytes(4, "little"))
    raw[at] = 23
    path.write_bytes(bytes(raw))
    assert store.load("conv") is None


def test_a_discard_after_the_epoch_was_taken_wins(store):
    epoch = store.epoch("conv")  # taken before the (slow) state is read
    store.discard("conv")  # the conversation is deleted meanwhile
    assert store.save("conv", [1], b"data", epoch=epoch) is None and not store.path_for("conv").exists()
