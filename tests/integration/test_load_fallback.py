"""A plan that fails to load falls back to fewer GPU layers, and says so.

The failure is injected (no GPU here runs out of memory): the first load attempt raises the error
llama.cpp gives, every later attempt loads the real model.
"""

from pathlib import Path

import pytest

from tandem.app.config import Settings
from tandem.app.services import Services
from tandem.runtime.engine import worker as engine_worker
from tandem.runtime.errors import ModelLoadError

FIXTURE = Path(__file__).parent.parent / "fixtures" / "hardware" / "rtx3060-desktop.json"


def test_failed_load_falls_back_to_fewer_gpu_layers(tmp_path, monkeypatch):
    real_open = engine_worker.ModelWorker.open.__func__
    attempts = []

    def flaky_open(cls, params, **kw):
        attempts.append(params.n_gpu_layers)
        if len(attempts) == 1:
            raise ModelLoadError("llama.cpp could not load the model (out of memory)")
        return real_open(cls, params, **kw)

    monkeypatch.setattr(engine_worker.ModelWorker, "open", classmethod(flaky_open))
    services = Services.open(Settings(data_dir=tmp_path, port=0, hardware_profile=FIXTURE))
    try:
        plan = services.models.loaded_models()[0].plan
        assert attempts[0] == 31 and attempts[1] < 31  # all 30 layers + output first, then fewer
        assert plan.n_gpu_layers == attempts[1]
        assert "out of memory" in plan.fallback_from
        assert any("fewer GPU layers" in r for r in plan.reasons)
    finally:
        services.close()


def test_no_plan_loads_is_one_clear_error(tmp_path, monkeypatch):
    def always_fails(cls, params, **kw):
        raise ModelLoadError("out of memory")

    monkeypatch.setattr(engine_worker.ModelWorker, "open", classmethod(always_fails))
    with pytest.raises(ModelLoadError, match="could not be loaded: 31 GPU layers"):
        Services.open(Settings(data_dir=tmp_path, port=0, hardware_profile=FIXTURE))
