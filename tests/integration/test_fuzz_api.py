"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis): every
operation gets generated requests, valid and invalid; none may answer 5xx, and every answer must
match what the schema says of it (content type, body schema)."""

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from tandem.app.server import ServerThread
from tests.conftest import make_settings
from tests.fixtures.hubserver import HubServer

TOTAL_CASES = 2000
# An endpoint that streams until the client leaves: a fuzzer's request would never end.
ENDLESS = {("GET", "/api/hub/downloads/events")}
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, model_path):
    # Replies of a few tokens (requests asking for more get 422), and a local hub with one repo.
    mp = pytest.MonkeyPatch()
    with HubServer() as hub:
        hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": model_path})
        mp.setenv("HF_ENDPOINT", hub.url)
        mp.delenv("HF_TOKEN", raising=False)
        settings_ = make_settings(tmp_path_factory.mktemp("fuzz"), max_tokens=4, max_reply_tokens=16, max_body_mb=4)
        with ServerThread(settings_) as srv:
            yield srv
    mp.undo()


def test_no_request_gets_a_server_error_or_breaks_the_schema(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if (op.method.upper(), op.path) not in ENDLESS]
    per_operation = 2 * -(-TOTAL_CASES // len(operations))  # operations with small schemas yield fewer
    statuses: Counter = Counter()
    failures: list[str] = []

    for op in operations:
        @settings(max_examples=per_operation, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            response = case.call(base_url=fuzz_server.url, timeout=60)
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as err:  # noqa: BLE001 - collected, reported below
                failures.append(f"{op.method.upper()} {op.path} -> {response.status_code}: {str(err)[:300]}")

        run()

    total = sum(statuses.values())
    print(f"\nfuzzed {total} requests over {len(operations)} operations: {dict(sorted(statuses.items()))}")
    assert total >= TOTAL_CASES, total
    assert not [s for s in statuses if s >= 500], statuses
    assert not failures, "\n".join(failures[:20])
    assert fuzz_server.services.store.db.execute("pragma integrity_check").fetchone()[0] == "ok"
