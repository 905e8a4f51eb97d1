"""Structured output and token counting through the Python host and the CLI (issue 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import anyio
import msgspec
import pytest

from host import AsyncClient, BadRequest, Client, IncompleteOutput, response_format
from tests.harness import REPO_ROOT

TIMEOUT = 120


class Pet(msgspec.Struct):
    name: str
    kind: Literal["cat", "dog", "fish"]
    legs: int


class Household(msgspec.Struct):
    family: str
    pets: list[Pet]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_response_format_accepts_what_a_python_caller_has() -> None:
    assert response_format(None) is None
    assert response_format("json").type == "json"
    bare = response_format({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert bare.type == "json_schema" and bare.schema["properties"]["a"]["type"] == "integer"
    wrapped = response_format({"type": "json_schema", "schema": {"type": "string"}})
    assert wrapped.type == "json_schema" and wrapped.schema == {"type": "string"}
    from_struct = response_format(Household)
    assert from_struct.type == "json_schema" and "$defs" in from_struct.schema
    assert response_format(list[int]).schema == {"type": "array", "items": {"type": "integer"}}
    with pytest.raises(TypeError):
        response_format(42)


@pytest.mark.anyio
async def test_chat_as_decodes_into_the_struct() -> None:
    async with AsyncClient() as client:
        await client.load()
        with anyio.fail_after(TIMEOUT):
            household = await client.chat_as("Describe a family with two pets.", Household, max_tokens=300, temperature=0)
        assert isinstance(household, Household) and all(isinstance(p, Pet) for p in household.pets)
        assert all(p.kind in ("cat", "dog", "fish") for p in household.pets)
        with pytest.raises(IncompleteOutput) as info, anyio.fail_after(TIMEOUT):
            await client.chat_as("Describe a family.", Household, max_tokens=4, temperature=0)
        assert info.value.result.incomplete and info.value.result.stop_reason == "max_tokens"
        with pytest.raises(BadRequest) as bad:
            await client.chat("x", response_format={"type": "json_schema", "schema": {"type": "nonsense"}})
        assert "response_format.schema" in bad.value.message


@pytest.mark.anyio
async def test_token_counting_through_the_client() -> None:
    async with AsyncClient() as client:
        await client.load(system_prompt="Be brief.")
        ids = await client.tokenize("Hello, world!")
        assert ids and await client.detokenize(ids) == "Hello, world!"
        count = await client.count_tokens("What is a llama?")
        with anyio.fail_after(TIMEOUT):
            done = await client.chat("What is a llama?", max_tokens=4, temperature=0)
        assert count.tokens == done.usage.prompt_tokens and count.n_ctx == client.model.n_ctx
        assert (await client.session("other").count_tokens("What is a llama?")).tokens == count.tokens


def test_sync_client_token_counting_and_chat_as() -> None:
    with Client() as client:
        client.load()
        assert client.detokenize(client.tokenize("tea")) == "tea"
        assert client.count_tokens().tokens == 0  # nothing said yet, no system prompt
        pets = client.chat_as("Name two numbers.", list[int], max_tokens=40, temperature=0)
        assert isinstance(pets, list) and all(isinstance(n, int) for n in pets)


def test_cli_json_schema(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(msgspec.json.schema(Pet)), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "host.cli", "--prompt", "Describe a pet.", "--json-schema", str(schema), "--temperature", "0", "--max-tokens", "200", "--no-stats"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    msgspec.json.decode(proc.stdout.strip(), type=Pet)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "host.cli", "--prompt", "x", "--json-schema", str(bad)], capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO_ROOT)
    assert proc.returncode != 0 and "is not JSON" in proc.stderr
