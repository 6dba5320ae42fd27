import os
import struct

import pytest

from runtime.errors import ModelFileError
from runtime.gguf import check_model_file


def header(magic=b"GGUF", version=3):
    return magic + struct.pack("<IQQ", version, 0, 0)


def test_real_model_passes(model_path):
    assert check_model_file(model_path) == model_path.resolve()


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        check_model_file(tmp_path / "nope.gguf")


def test_directory(tmp_path):
    with pytest.raises(ModelFileError, match="not a file"):
        check_model_file(tmp_path)


def test_truncated_header(tmp_path):
    p = tmp_path / "t.gguf"
    p.write_bytes(b"GGUF\x03")
    with pytest.raises(ModelFileError, match="truncated"):
        check_model_file(p)


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(header(magic=b"PK\x03\x04"))
    with pytest.raises(ModelFileError, match="Not a GGUF"):
        check_model_file(p)


def test_unsupported_version(tmp_path):
    p = tmp_path / "v.gguf"
    p.write_bytes(header(version=99))
    with pytest.raises(ModelFileError, match="version 99"):
        check_model_file(p)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable(tmp_path):
    p = tmp_path / "r.gguf"
    p.write_bytes(header())
    p.chmod(0)
    with pytest.raises(ModelFileError, match="cannot be read"):
        check_model_file(p)
