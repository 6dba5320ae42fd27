"""A predicted speed says what it stands on: "estimated" until this model's own plain replies were
measured here, then "measured" (the plan, the Models page's plan view and the Hardware page read it)."""

import httpx

from tandem.app.server import ServerThread
from tests.conftest import make_settings

MODEL = "smollm2-135m-instruct-q4_1"


def test_three_plain_replies_turn_an_estimate_into_a_measurement(tmp_path):
    with ServerThread(make_settings(tmp_path, speculative="off")) as srv, \
            httpx.Client(base_url=srv.url, timeout=120) as api:
        fresh = api.get(f"/api/models/{MODEL}/plan", params={"n_ctx": 2048}).json()
        assert (fresh["speed_basis"], fresh["speed_samples"]) == ("estimated", 0)
        for i in range(3):
            r = api.post("/v1/chat/completions", json={
                "model": MODEL, "max_tokens": 40, "temperature": 0,
                "messages": [{"role": "user", "content": f"Tell a long story about lighthouse number {i}."}]})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 16
        after = api.get(f"/api/models/{MODEL}/plan", params={"n_ctx": 2048}).json()
        assert (after["speed_basis"], after["speed_samples"]) == ("measured", 3)
        assert any("Speed calibrated from 3 measurements on this machine" in r for r in after["reasons"])
