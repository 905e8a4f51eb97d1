"""The cost of the call grammar (issue 16): decode speed while a tool call is constrained, and without.

Same model, prompt and tools on both sides, alternating within one run:
"required" (the call grammar constrains every token) against "none" (the tools
are shown, nothing constrains the text), each request generating the same
number of tokens. The grammar is checked against the whole vocabulary at each
token, which is what this measures.
"""

from __future__ import annotations

import statistics
from typing import Any

import anyio

from host import AsyncClient

TOOLS: list[dict[str, Any]] = [
    {
        "name": "book_table",
        "description": "Book a table at a restaurant",
        "parameters": {
            "type": "object",
            "properties": {
                "restaurant": {"type": "string", "maxLength": 40},
                "party": {"type": "object", "properties": {"adults": {"type": "integer"}, "children": {"type": "integer"}}, "required": ["adults"]},
                "seating": {"enum": ["indoor", "terrace", "bar"]},
                "notes": {"type": "string", "maxLength": 120},
            },
            "required": ["restaurant", "party", "seating", "notes"],
        },
    },
    {"name": "get_time", "description": "The time in a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
]
PROMPT = "Book me a table for two at Luigi's, on the terrace, and note that we are celebrating."


async def _run(rounds: int) -> dict[str, Any]:
    constrained: list[float] = []
    free: list[float] = []
    tokens: list[int] = []
    async with AsyncClient() as client:
        await client.load()
        for _ in range(rounds):
            await client.reset()
            call = await client.chat(PROMPT, tools=TOOLS, tool_choice={"name": "book_table"}, parallel_tool_calls=False, max_tokens=200, temperature=0.0)
            n = call.usage.completion_tokens
            await client.reset()
            text = await client.chat(PROMPT, tools=TOOLS, tool_choice="none", max_tokens=max(n, 8), temperature=0.0)
            # A rate needs a few tokens on each side; the free text may stop before n.
            if n >= 8 and text.usage.completion_tokens >= 8:
                constrained.append(call.timings.tokens_per_second)
                free.append(text.timings.tokens_per_second)
                tokens.append(n)
    c, f = statistics.median(constrained or [0.0]), statistics.median(free or [0.0])
    return {
        "rounds": len(constrained),
        "call_tokens": statistics.median(tokens or [0]),
        "grammar_tokens_per_second": round(c, 1),
        "free_tokens_per_second": round(f, 1),
        "ratio": round(c / f, 3) if f else None,
    }


def run_all(quick: bool) -> dict[str, Any]:
    return anyio.run(_run, 1 if quick else 5)


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    r = results
    ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "n/a"
    return [
        (
            f"tools: decode with the call grammar / without (a {r['call_tokens']:.0f}-token call, median of {r['rounds']})",
            f"{r['grammar_tokens_per_second']:.1f} / {r['free_tokens_per_second']:.1f} tok/s ({ratio})",
        )
    ]
