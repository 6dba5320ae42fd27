"""JSON output through the OpenAI API: generations against several schemas, each checked.

  .venv/bin/python scripts/bench_json.py [--per-schema 10] [--model ID]

Starts Tandem on a free port with a throwaway data folder, asks for `--per-schema` replies per
schema (temperature 0.8, a different seed each) with response_format json_schema through the
official openai client, and checks each reply: it parses as JSON and validates against its
schema. Prints the count valid per schema, finish reasons and the time per reply. A benchmark,
not a test: it reports, it never fails on a number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jsonschema_rs  # noqa: E402
import openai  # noqa: E402

from tandem.app.config import Settings  # noqa: E402
from tandem.app.server import ServerThread  # noqa: E402

SCHEMAS = {
    "person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.(com|org)$"}},
        "required": ["name", "age", "email"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "id": {"type": "integer"}, "items": {"type": "array", "minItems": 1, "maxItems": 4, "items": {
            "type": "object", "properties": {"sku": {"type": "string", "maxLength": 10},
                                             "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["sku", "qty"], "additionalProperties": False}},
        "paid": {"type": "boolean"}}, "required": ["id", "items", "paid"], "additionalProperties": False},
    "weather": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["C", "F"]},
        "temps": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}},
        "required": ["city", "unit", "temps"], "additionalProperties": False},
    "tags": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 60},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 5}},
        "required": ["title", "tags"], "additionalProperties": False},
    "choice": {"type": "object", "properties": {
        "answer": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 20}]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "note": {"type": ["string", "null"], "maxLength": 40}},
        "required": ["answer", "confidence"], "additionalProperties": False},
}
PROMPTS = {
    "person": "Invent a person and describe them.",
    "order": "Write a small shop order.",
    "weather": "Give the weather for three days in a city.",
    "tags": "Title and tag a blog post about gardening.",
    "choice": "What is 6 times 7? Answer with your confidence.",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-schema", type=int, default=10)
    ap.add_argument("--model", default=None, help="an installed model id (default: the built-in model)")
    ap.add_argument("--max-tokens", type=int, default=400)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tandem-json-") as data, \
            ServerThread(Settings(data_dir=Path(data), port=0)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="local", max_retries=0, timeout=300)
        client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        total = valid = 0
        print(f"{'schema':<10}{'valid':>8}{'finish':>22}{'s/reply':>10}")
        for name, schema in SCHEMAS.items():
            ok, finishes, times = 0, Counter(), []
            fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
            for seed in range(args.per_schema):
                t0 = time.perf_counter()
                r = client.chat.completions.create(
                    model=args.model, messages=[{"role": "user", "content": PROMPTS[name]}], temperature=0.8,
                    seed=seed, max_tokens=args.max_tokens, response_format=fmt)
                times.append(time.perf_counter() - t0)
                choice = r.choices[0]
                finishes[choice.finish_reason] += 1
                try:
                    jsonschema_rs.validate(schema, json.loads(choice.message.content))
                    ok += 1
                except (ValueError, jsonschema_rs.ValidationError) as err:
                    print(f"  {name} seed {seed}: invalid ({err}): {choice.message.content[:120]!r}")
            total += args.per_schema
            valid += ok
            shown = ", ".join(f"{k} {v}" for k, v in finishes.items())
            print(f"{name:<10}{f'{ok}/{args.per_schema}':>8}{shown:>22}{statistics.median(times):>10.2f}")
        print(f"all       {valid}/{total} valid ({100 * valid / total:.0f}%)")
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
