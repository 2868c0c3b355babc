import json
from pathlib import Path

from autoretrain.runs.schema import Run, run_json_schema

DOCS = Path(__file__).resolve().parents[2] / "docs" / "run.schema.json"


def test_published_json_schema_matches_the_code():
    # docs/run.schema.json is what other apps code against: it must not drift from Run.
    published = json.loads(DOCS.read_text())
    assert published == json.loads(json.dumps(run_json_schema(), sort_keys=True)), (
        "docs/run.schema.json is stale: regenerate it from autoretrain.runs.schema.run_json_schema()"
    )


def test_unknown_fields_survive_a_round_trip():
    raw = {
        "run_id": "r1",
        "vendor_trace_id": "abc",
        "messages": [
            {"role": "user", "content": "hi", "x_meta": {"lang": "en"}},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "calc", "arguments": {"a": 1}},
                    }
                ],
            },
        ],
    }
    back = json.loads(Run.model_validate(raw).to_json())
    assert back["vendor_trace_id"] == "abc"
    assert back["messages"][0]["x_meta"] == {"lang": "en"}
    # Arguments logged as an object are stored as the JSON string OpenAI sends.
    assert back["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'
