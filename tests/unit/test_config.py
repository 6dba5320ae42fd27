from pathlib import Path

import pytest
from pydantic import ValidationError

from tandem.app.config import Settings
from tandem.app.services.models import model_id_for


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("TANDEM_PORT", "0")
    s = Settings()
    assert s.db_path == tmp_path / "d" / "tandem.db"
    assert s.port == 0
    assert s.host == "127.0.0.1" and s.loopback
    assert s.n_threads is None and s.n_gpu_layers is None  # left to the planner
    monkeypatch.setenv("TANDEM_N_THREADS", "3")
    assert Settings().n_threads == 3


def test_bad_port_is_refused(monkeypatch):
    monkeypatch.setenv("TANDEM_PORT", "70000")
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct-q4_1"),
        ("../../evil name!.gguf", "evil-name"),
        ("....gguf", "model"),
    ],
)
def test_model_ids_are_url_safe(name, expected):
    assert model_id_for(Path(name)) == expected
