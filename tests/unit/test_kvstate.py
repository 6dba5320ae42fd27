"""Saved-cache files: round trip, binding, damage, size cap (pure file logic, no model)."""

from __future__ import annotations

import os

import pytest

from tandem.runtime.engine.kvstate import KVStateStore, state_path


def store(tmp_path, binding="plan-a", cap=10_000) -> KVStateStore:
    return KVStateStore(tmp_path, binding, cap)


def test_round_trip(tmp_path):
    s = store(tmp_path)
    s.save("conv", [1, 2, 3, 70000], b"state-bytes")
    saved = s.load("conv")
    assert saved.tokens == [1, 2, 3, 70000] and saved.data == b"state-bytes"
    assert s.load("other") is None


def test_keys_are_hashed_into_file_names(tmp_path):
    path = state_path(tmp_path, "../../etc/passwd")
    assert path.parent == tmp_path and "/" not in path.name and path.suffix == ".kvstate"


def test_another_binding_is_refused_and_deleted(tmp_path):
    store(tmp_path, "plan-a").save("conv", [1, 2], b"x")
    assert store(tmp_path, "plan-b").load("conv") is None
    assert not state_path(tmp_path, "conv").exists()


@pytest.mark.parametrize("damage", [
    lambda raw: raw[:-3],  # truncated
    lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]),  # one bit flipped in the state
    lambda raw: b"NOTKV" + raw[5:],  # wrong magic
    lambda raw: raw[:14] + b"{broken" + raw[21:],  # header no longer JSON
    lambda raw: raw + b"extra",
])
def test_damaged_files_are_discarded(tmp_path, damage):
    s = store(tmp_path)
    path = s.save("conv", [5, 6, 7], b"0123456789" * 10)
    path.write_bytes(damage(path.read_bytes()))
    assert s.load("conv") is None
    assert not path.exists()


def test_least_recently_used_go_first_under_the_cap(tmp_path):
    s = store(tmp_path, cap=1500)  # room for three files of about 450 bytes
    for i, key in enumerate(["old", "mid", "new"]):
        path = s.save(key, [1], b"x" * 300)
        os.utime(path, ns=(i * 10**9, i * 10**9))
    assert s.load("old") is not None  # using it makes it recent
    s.save("newest", [1], b"x" * 300)
    assert s.total_bytes() <= 1500
    assert s.load("mid") is None and s.load("old") is not None and s.load("newest") is not None


def test_a_state_larger_than_the_cap_is_not_written(tmp_path):
    s = store(tmp_path, cap=100)
    assert s.save("big", [1], b"x" * 500) is None
    assert s.load("big") is None and s.total_bytes() == 0
