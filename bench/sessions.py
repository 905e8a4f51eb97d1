"""Benchmarks of chat sessions (issue 8): switching, preload, restore, the RAM budget.

Time to first token is measured on the host side (request sent to first
chunk received), through the real client and worker, alternating the sides
of each comparison within one run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from host import AsyncClient

SYSTEM = "You are a helpful assistant. Answer briefly."


def _document(topic: str, n: int) -> str:
    return " ".join(f"Log entry {i} about {topic}: the crew checked the gauges, noted the weather and moved on." for i in range(n))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def _ttft(client: AsyncClient, text: Any, session: str, max_tokens: int = 4) -> tuple[float, Any]:
    t0 = time.perf_counter()
    first = 0.0
    async with await client.generate(text, session=session, max_tokens=max_tokens, temperature=0.0) as stream:
        async for _ in stream:
            if not first:
                first = time.perf_counter()
    assert stream.result is not None
    return ((first or time.perf_counter()) - t0) * 1000, stream.result


async def _two_conversations(client: AsyncClient, n_entries: int) -> None:
    for name in ("a", "b"):
        await _ttft(client, f"Here is a ship's log.\n{_document(name, n_entries)}\nRemember it.", name, max_tokens=8)


def bench_switching(rounds: int, n_entries: int) -> dict[str, Any]:
    """TTFT of a turn after switching sessions, against continuing one, against re-evaluation."""

    async def run(budget: int | None) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"switch": [], "continue": [], "prompt_tokens": [], "cached_switch": []}
        async with AsyncClient() as client:
            await client.load(n_ctx=4096, system_prompt=SYSTEM, **({"session_cache_bytes": budget} if budget is not None else {}))
            await _two_conversations(client, n_entries)
            for r in range(rounds):
                # "a" was not the last session used: this turn is a switch.
                ms, done = await _ttft(client, f"Question {r}: what did entry {r} say?", "a")
                out["switch"].append(ms)
                out["cached_switch"].append(done.usage.cached_tokens)
                out["prompt_tokens"].append(done.usage.prompt_tokens)
                # The same session again: a continuation.
                ms, _ = await _ttft(client, f"And entry {r + 1}?", "a")
                out["continue"].append(ms)
                await _ttft(client, f"Question {r} for b.", "b")  # back to b, so the next "a" turn switches
        return out

    cached = anyio.run(run, None)
    evicted = anyio.run(run, 0)
    return {
        "prompt_tokens": cached["prompt_tokens"][-1],
        "switch_ttft_ms": median(cached["switch"]),
        "continue_ttft_ms": median(cached["continue"]),
        "switch_reevaluated_ttft_ms": median(evicted["switch"]),
        "ratio_switch_vs_continue": median(cached["switch"]) / median(cached["continue"]),
        "ratio_reevaluation_vs_switch": median(evicted["switch"]) / median(cached["switch"]),
        "cached_tokens_after_switch": cached["cached_switch"],
        "cached_tokens_after_switch_evicted": evicted["cached_switch"],
        "samples": {"switch": cached["switch"], "continue": cached["continue"], "switch_evicted": evicted["switch"]},
    }


def bench_preload(rounds: int) -> dict[str, Any]:
    """TTFT after a preload of the full input, against one decode step and no preload."""

    async def run() -> dict[str, Any]:
        with_preload: list[float] = []
        without: list[float] = []
        step_ms: list[float] = []
        async with AsyncClient() as client:
            await client.load(n_ctx=4096, system_prompt=SYSTEM)
            await _ttft(client, f"Here is a ship's log.\n{_document('p', 40)}", "default", max_tokens=8)
            for r in range(rounds):
                text = f"Question {r}: summarise entries {r} to {r + 5} of the log in two sentences, please."
                for side in ("pre", "plain") if r % 2 == 0 else ("plain", "pre"):
                    if side == "pre":
                        await client.preload(text + " (p)")
                        ms, done = await _ttft(client, text + " (p)", "default", max_tokens=24)
                        with_preload.append(ms)
                        if done.timings.tokens_per_second:
                            step_ms.append(1000 / done.timings.tokens_per_second)
                    else:
                        ms, _ = await _ttft(client, text + " (n)", "default", max_tokens=24)
                        without.append(ms)
        return {
            "ttft_after_preload_ms": median(with_preload),
            "ttft_without_preload_ms": median(without),
            "decode_step_ms": median(step_ms),
            "ratio_vs_decode_step": median(with_preload) / median(step_ms),
            "samples": {"preload": with_preload, "plain": without, "step": step_ms},
        }

    return anyio.run(run)


def bench_restore(rounds: int, n_entries: int) -> dict[str, Any]:
    """Restore a saved ~2,000-token conversation and answer, against re-evaluating it."""

    async def run() -> dict[str, Any]:
        restore_ms: list[float] = []
        reeval_ms: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "long.session"
            async with AsyncClient() as client:
                await client.load(n_ctx=4096, system_prompt=SYSTEM)
                await _ttft(client, f"Here is a ship's log.\n{_document('r', n_entries)}\nRemember it.", "default", max_tokens=16)
                saved = await client.save_session(path)
                history = [{"role": "system", "content": SYSTEM}, *client.history]
            file_bytes = path.stat().st_size
            for r in range(rounds):
                for side in ("restore", "reeval") if r % 2 == 0 else ("reeval", "restore"):
                    async with AsyncClient() as client:
                        await client.load(n_ctx=4096)
                        question = f"What happened in entry {r}?"
                        if side == "restore":
                            t0 = time.perf_counter()
                            await client.restore_session(path)
                            restored_after_ms = (time.perf_counter() - t0) * 1000
                            ms, _ = await _ttft(client, question, "default")
                            restore_ms.append(restored_after_ms + ms)
                        else:
                            ms, _ = await _ttft(client, [*history, {"role": "user", "content": question}], "default")
                            reeval_ms.append(ms)
        return {
            "conversation_tokens": saved.session.tokens,
            "file_bytes": file_bytes,
            "restore_then_first_token_ms": median(restore_ms),
            "reevaluate_first_token_ms": median(reeval_ms),
            "ratio": median(reeval_ms) / median(restore_ms),
            "samples": {"restore": restore_ms, "reevaluate": reeval_ms},
        }

    return anyio.run(run)


def bench_budget(n_sessions: int, n_entries: int, budget: int) -> dict[str, Any]:
    """Many sessions under a small budget: the cache never exceeds it, and what RSS does."""

    async def run() -> dict[str, Any]:
        peaks: list[int] = []
        async with AsyncClient() as client:
            await client.load(n_ctx=4096, session_cache_bytes=budget)
            rss_start = _rss(client.pid)
            for i in range(n_sessions):
                await _ttft(client, f"Log {i}.\n{_document(str(i), n_entries)}", f"s{i}")
                listing = await client.sessions()
                peaks.append(listing.cache_bytes)
            for i in range(n_sessions):  # visit them all again: evictions and restores
                await _ttft(client, "Next?", f"s{i}")
                peaks.append((await client.sessions()).cache_bytes)
            listing = await client.sessions()
            rss_end = _rss(client.pid)
        per_session = max((s.kv_bytes for s in listing.sessions), default=0)
        return {
            "budget_bytes": budget,
            "max_cache_bytes": max(peaks),
            "within_budget": max(peaks) <= budget,
            "kv_bytes_per_session": per_session,
            "sessions_cached_at_end": sum(1 for s in listing.sessions if s.kv_bytes),
            "rss_growth_bytes": rss_end - rss_start,
        }

    return anyio.run(run)


def _rss(pid: int | None) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def run_all(quick: bool) -> dict[str, Any]:
    return {
        "switching": bench_switching(rounds=1 if quick else 7, n_entries=5 if quick else 66),
        "preload": bench_preload(rounds=2 if quick else 8),
        "restore": bench_restore(rounds=1 if quick else 4, n_entries=5 if quick else 90),
        "budget": bench_budget(n_sessions=3 if quick else 6, n_entries=5 if quick else 60, budget=(2 if quick else 80) * 1024 * 1024),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    s, p, r, b = results["switching"], results["preload"], results["restore"], results["budget"]
    return [
        (
            f"sessions: TTFT after a switch / continuing ({s['prompt_tokens']}-token conversations)  (goal <= 1.3)",
            f"{s['switch_ttft_ms']:.0f} / {s['continue_ttft_ms']:.0f} ms ({s['ratio_switch_vs_continue']:.2f}x); re-evaluated: {s['switch_reevaluated_ttft_ms']:.0f} ms",
        ),
        (
            "sessions: TTFT after preload / one decode step  (goal <= 2)",
            f"{p['ttft_after_preload_ms']:.1f} / {p['decode_step_ms']:.1f} ms ({p['ratio_vs_decode_step']:.2f}x); without preload {p['ttft_without_preload_ms']:.0f} ms",
        ),
        (
            f"sessions: restore + first token vs re-evaluating {r['conversation_tokens']} tokens  (goal >= 5x)",
            f"{r['restore_then_first_token_ms']:.0f} vs {r['reevaluate_first_token_ms']:.0f} ms ({r['ratio']:.1f}x)",
        ),
        (
            "sessions: RAM cache peak / budget (MB)",
            f"{b['max_cache_bytes'] / 1e6:.1f} / {b['budget_bytes'] / 1e6:.1f} ({'within' if b['within_budget'] else 'OVER'})",
        ),
    ]
