"""How fast a model's replies actually were, beside what the plan predicted, for the UI's speed chart.

GET /api/models/{model_id}/speed?limit=50 answers {"model_id", "predicted_tps", "prediction",
"replies": [{"id", "created_at", "decode_tps", "predicted_tps", "completion_tokens", "spec_source",
"acceptance"}]}: the latest assistant replies of that model that have a measured speed, oldest
first. "prediction" says where predicted_tps comes from: "plan" (the loaded model's plan), "reply"
(the newest stored reply's prediction) or null (nothing known yet).
"""

from __future__ import annotations

from fastapi import APIRouter, Query

from tandem.app.api.deps import ModelsDep, StoreDep
from tandem.app.store import Store

router = APIRouter(prefix="/api", tags=["stats"])

REPLY_COLUMNS = "id, created_at, decode_tps, predicted_tps, completion_tokens, spec_source, drafted_tokens, accepted_tokens"


def latest_replies(store: Store, model_id: str, limit: int) -> list[dict]:
    # Read under the store's lock: the one SQLite connection is shared by the server's threads.
    with store._lock:
        rows = list(store.db.query(
            f"select {REPLY_COLUMNS} from messages"
            " where role = 'assistant' and model_id = ? and decode_tps is not null"
            " order by id desc limit ?", [model_id, limit]))
    replies = []
    for r in reversed(rows):  # the chart reads left to right, oldest to newest
        drafted = r.pop("drafted_tokens")
        accepted = r.pop("accepted_tokens")
        r["acceptance"] = round(accepted / drafted, 4) if drafted and accepted is not None else None
        replies.append(r)
    return replies


def latest_prediction(store: Store, model_id: str) -> float | None:
    with store._lock:
        row = next(store.db.query(
            "select predicted_tps from messages where role = 'assistant' and model_id = ?"
            " and predicted_tps is not null order by id desc limit 1", [model_id]), None)
    return row["predicted_tps"] if row else None


@router.get("/models/{model_id}/speed")
def model_speed(model_id: str, store: StoreDep, models: ModelsDep,
                limit: int = Query(50, ge=1, le=500)) -> dict:
    store.get_model(model_id)  # an unknown model is a 404, not an empty chart
    replies = latest_replies(store, model_id, limit)
    # Planning a model that is not loaded can mean a dry run through llama.cpp (seconds): the chart
    # does not wait for that, it takes the prediction stored with the newest reply instead.
    loaded = models.loaded_model(model_id)
    if loaded is not None:
        predicted, source = loaded.plan.decode_tps, "plan"
    else:
        predicted = latest_prediction(store, model_id)
        source = "reply" if predicted is not None else None
    return {"model_id": model_id, "predicted_tps": predicted, "prediction": source, "replies": replies}
