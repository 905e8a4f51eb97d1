"""Structured output and token counting (issue 9), on the real worker and default model.

The default model is a 135M model: what it writes is not the point. That it
writes JSON that parses and validates, because a grammar allows nothing
else, is. String and array sizes are bounded in the schemas so every reply
can finish within `max_tokens`.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

import protocol as P
from tests.harness import RawWorker

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested_object": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 16}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
            },
        },
        "required": ["name", "address"],
    },
    "array_of_objects": {
        "type": "object",
        "properties": {
            "pets": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}}, "required": ["name"]},
            }
        },
        "required": ["pets"],
    },
    "enum_and_numbers": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "ratio": {"type": "number"},
            "ok": {"type": "boolean"},
        },
        "required": ["colour", "count", "ratio", "ok"],
    },
    "refs_like_msgspec": {
        "$ref": "#/$defs/Owner",
        "$defs": {
            "Owner": {"type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"}}, "required": ["pet"]},
            "Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer", "maximum": 30}}, "required": ["kind", "age"]},
        },
    },
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 2, "maxItems": 4},
}


def gen(worker: RawWorker, input: Any, **fields: Any) -> P.Done:
    done, chunks = worker.generate(input, **fields)
    assert "".join(chunks) == done.text
    return done


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_constrained_output_parses_and_validates(shared_worker: RawWorker, name: str) -> None:
    schema = SCHEMAS[name]
    shared_worker.terminal(shared_worker.request(P.Reset))
    for temperature in (0.0, 0.9):
        done = gen(
            shared_worker,
            "Describe something as JSON.",
            max_tokens=200,
            temperature=temperature,
            seed=11,
            response_format=P.ResponseFormat(type="json_schema", schema=schema),
        )
        assert done.stop_reason == "eos" and not done.incomplete, done
        jsonschema.validate(json.loads(done.text), schema)


def test_json_mode_gives_an_object(shared_worker: RawWorker) -> None:
    done = gen(shared_worker, "List two fruits as JSON.", max_tokens=200, response_format=P.ResponseFormat(type="json"))
    if not done.incomplete:
        assert isinstance(json.loads(done.text), dict)
    else:
        assert done.stop_reason == "max_tokens"


def test_a_reply_cut_short_says_it_is_incomplete(shared_worker: RawWorker) -> None:
    done = gen(shared_worker, "Describe a pet.", max_tokens=3, response_format=P.ResponseFormat(type="json_schema", schema=SCHEMAS["array_of_objects"]))
    assert done.stop_reason == "max_tokens" and done.incomplete
    plain = gen(shared_worker, "Hi", max_tokens=3)
    assert not plain.incomplete  # the flag belongs to structured replies only


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "frobnicate"}, "Unrecognized schema"),
        ({"$ref": "#/$defs/Missing"}, "points nowhere"),
        ({"$ref": "https://example.com/schema.json"}, "only local references"),
        ({"$ref": "#/$defs/A", "$defs": {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}}}, "recursive"),
        ({"type": "string", "pattern": "no anchors"}, "Pattern must start"),
    ],
)
def test_invalid_schemas_are_refused_and_the_session_survives(shared_worker: RawWorker, schema: dict[str, Any], fragment: str) -> None:
    rid = shared_worker.new_id()
    err = shared_worker.error_for(P.Generate(id=rid, input="x", response_format=P.ResponseFormat(type="json_schema", schema=schema)))
    assert err.code == "invalid_request" and "response_format.schema" in err.message and fragment in err.message, err
    assert gen(shared_worker, "Still there?", max_tokens=4, temperature=0).text is not None


def test_a_property_named_like_a_keyword_is_kept(shared_worker: RawWorker) -> None:
    schema = {
        "type": "object",
        "properties": {"definitions": {"enum": ["a", "b"]}, "$defs": {"enum": ["c"]}, "enum": {"type": "boolean"}},
        "required": ["definitions", "$defs", "enum"],
    }
    done = gen(shared_worker, "JSON please.", max_tokens=60, temperature=0, response_format=P.ResponseFormat(type="json_schema", schema=schema))
    assert not done.incomplete
    jsonschema.validate(json.loads(done.text), schema)


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "string", "maxLength": 100_000}, "maxLength must be an integer from 0 to 1000"),
        ({"type": "array", "minItems": 10**9}, "minItems must be"),
        ({"enum": list(range(5000))}, "an enum of 5000 values"),
        (
            {"$ref": "#/$defs/L0", "$defs": {**{f"L{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/L{i + 1}"}, "b": {"$ref": f"#/$defs/L{i + 1}"}}} for i in range(30)}, "L30": {"type": "integer"}}},
            "subschemas once references are expanded",
        ),
    ],
)
def test_schemas_that_would_build_huge_grammars_are_refused(shared_worker: RawWorker, schema: dict[str, Any], fragment: str) -> None:
    err = shared_worker.error_for(P.Generate(id=shared_worker.new_id(), input="x", response_format=P.ResponseFormat(type="json_schema", schema=schema)))
    assert err.code == "invalid_request" and fragment in err.message, err


def test_a_deeply_nested_schema_is_invalid_not_internal(shared_worker: RawWorker) -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(700):
        schema = {"type": "array", "items": schema}
    err = shared_worker.error_for(P.Generate(id=shared_worker.new_id(), input="x", response_format=P.ResponseFormat(type="json_schema", schema=schema)))
    assert err.code == "invalid_request", err


def test_response_format_needs_a_schema_exactly_for_json_schema(shared_worker: RawWorker) -> None:
    err = shared_worker.error_for(P.Generate(id=shared_worker.new_id(), input="x", response_format=P.ResponseFormat(type="json_schema")))
    assert err.code == "invalid_request" and "required" in err.message
    raw = json.dumps({"type": "generate", "id": 99, "input": "x", "response_format": {"type": "yaml"}}).encode()
    shared_worker.send_raw(len(raw).to_bytes(4, "big") + raw)
    reply, _ = shared_worker.terminal(99)
    assert reply.code == "invalid_request" and "response_format" in reply.message


# ---------------------------------------------------------------------------
# token counting
# ---------------------------------------------------------------------------


def call(worker: RawWorker, msg: Any) -> Any:
    rid = worker.send(msg)
    reply, _ = worker.terminal(rid)
    return reply


def test_tokenize_detokenize_round_trip(shared_worker: RawWorker) -> None:
    text = "Héllo, wörld! 🦙 日本語 and plain words."
    tokens = call(shared_worker, P.Tokenize(id=shared_worker.new_id(), text=text))
    assert isinstance(tokens, P.Tokens) and tokens.count == len(tokens.ids) > 5
    back = call(shared_worker, P.Detokenize(id=shared_worker.new_id(), ids=tokens.ids))
    assert isinstance(back, P.Text) and back.text == text


def test_special_tokens_are_parsed_and_rendered_only_when_asked(shared_worker: RawWorker) -> None:
    text = "<|im_start|>user"
    plain = call(shared_worker, P.Tokenize(id=shared_worker.new_id(), text=text))
    special = call(shared_worker, P.Tokenize(id=shared_worker.new_id(), text=text, special=True))
    assert special.count < plain.count  # "<|im_start|>" became one token
    hidden = call(shared_worker, P.Detokenize(id=shared_worker.new_id(), ids=special.ids))
    shown = call(shared_worker, P.Detokenize(id=shared_worker.new_id(), ids=special.ids, special=True))
    assert "<|im_start|>" not in hidden.text and "<|im_start|>user" in shown.text


def test_detokenize_refuses_ids_outside_the_vocabulary(shared_worker: RawWorker) -> None:
    err = shared_worker.error_for(P.Detokenize(id=shared_worker.new_id(), ids=[1, 10**9]))
    assert err.code == "invalid_request" and "not in the vocabulary" in err.message


def test_count_matches_the_prompt_tokens_generate_reports(raw_worker: RawWorker) -> None:
    w = raw_worker
    w.init()
    w.load(system_prompt="You are terse.")
    first = call(w, P.Count(id=w.new_id(), input="What is a llama?"))
    done = gen(w, "What is a llama?", max_tokens=8, temperature=0)
    assert first.tokens == done.usage.prompt_tokens and first.n_ctx == 4096
    follow = call(w, P.Count(id=w.new_id(), input="And an alpaca?"))
    done = gen(w, "And an alpaca?", max_tokens=8, temperature=0)
    assert follow.tokens == done.usage.prompt_tokens
    as_list = call(w, P.Count(id=w.new_id(), session="other", input=[P.ChatMessage(role="user", content="What is a llama?")]))
    assert as_list.tokens == first.tokens  # a new session starts with the load's system prompt
    so_far = call(w, P.Count(id=w.new_id()))
    assert first.tokens < so_far.tokens < done.usage.prompt_tokens + done.usage.completion_tokens + 8
    sessions = call(w, P.Sessions(id=w.new_id()))
    assert {s.session for s in sessions.sessions} == {"default"}  # counting created no session


def test_counting_during_a_generation_neither_waits_nor_disturbs_it(raw_worker: RawWorker) -> None:
    prompt = "Write a long story about a lighthouse."

    def story(worker: RawWorker, chatter: bool) -> tuple[str, int]:
        worker.init()
        worker.load()
        rid = worker.request(P.Generate, input=prompt, max_tokens=60, temperature=0)
        answered = 0
        if chatter:
            worker.until(lambda m: isinstance(m, P.Chunk) and m.id == rid)
            ids = [worker.send(P.Tokenize(id=worker.new_id(), text="some words " * 50)) for _ in range(5)]
            ids += [worker.send(P.Count(id=worker.new_id(), input="next question")) for _ in range(5)]
            for cid in ids:
                reply, _ = worker.terminal(cid)
                assert isinstance(reply, (P.Tokens, P.TokenCount)), reply  # never busy
                answered += 1
        done, _ = worker.terminal(rid)
        assert isinstance(done, P.Done)
        return done.text, answered

    text_with, answered = story(raw_worker, True)
    other = RawWorker()
    try:
        text_without, _ = story(other, False)
    finally:
        other.close()
    assert answered == 10
    assert text_with == text_without  # the generation's KV state was never touched


def test_token_requests_before_a_load_are_no_model(raw_worker: RawWorker) -> None:
    raw_worker.init()
    for msg in (P.Tokenize(id=1, text="x"), P.Detokenize(id=2, ids=[1]), P.Count(id=3, input="x")):
        assert raw_worker.error_for(msg).code == "no_model"
