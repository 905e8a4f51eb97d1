"""`make bench` / `python -m bench`: the worker against the library it wraps.

Every comparison alternates its sides within one invocation and reports
medians, so a noisy shared machine shifts both sides alike. Results go to
stdout (a table), `bench/results/latest.json`, and `bench/plot.png`.
`--quick` runs tiny counts (used by the test suite to keep this from rotting;
its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio

import protocol as P
from host import AsyncClient
from worker import llama_backend as B
from worker.model_locator import default_model_path

from . import baselines, sessions, tools

ROOT = Path(__file__).resolve().parent
STORY = "Write a long, detailed story about a lighthouse keeper and a storm. Keep going for many paragraphs."
LONG_PROMPT = " ".join(f"Note {i}: the harbour master logged ships, tides and the weather at dawn." for i in range(95))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------
# worker-side measurements (through the real host client)
# ---------------------------------------------------------------------------


async def worker_stream(client: AsyncClient, text: Any, max_tokens: int, **opts: Any) -> tuple[P.Done, float, float, float]:
    """(result, seconds to first chunk, seconds of streaming after it, client-side end)."""
    t0 = time.perf_counter()
    first = 0.0
    async with await client.generate(text, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0, **opts) as stream:
        async for _ in stream:
            if not first:
                first = time.perf_counter()
    end = time.perf_counter()
    assert stream.result is not None
    return stream.result, (first - t0) if first else 0.0, (end - first) if first else 0.0, end


def bench_decode(rounds: int, max_tokens: int) -> dict[str, Any]:
    model_path = str(default_model_path())
    cores = B.usable_cores()
    results: dict[str, list[float]] = {"worker": [], "worker_reported": [], "a_same_settings": [], "b_defaults": [], "c_ceiling": []}
    counts: dict[str, list[int]] = {k: [] for k in results}
    messages = [{"role": "user", "content": STORY}]
    llm_a = baselines.make_llama(model_path, n_ctx=4096, n_threads=cores, n_threads_batch=cores, n_batch=512)
    llm_b = baselines.make_llama(model_path)
    model_c = B.Model(model_path, B.ModelParams(use_extra_bufts=not B.cpu_has_amx()))
    prompt_c = model_c.tokenize(llm_a.tokenizer_.detokenize(llm_a.tokenize(STORY.encode())).decode("utf-8", "replace"), add_special=False, parse_special=False)

    async def worker_rounds() -> None:
        async with AsyncClient() as client:
            await client.load(n_ctx=4096)
            for r in range(rounds):
                for side in ("worker", "a", "b", "c") if r % 2 == 0 else ("c", "b", "a", "worker"):
                    if side == "worker":
                        await client.reset()
                        done, _, stream_s, _ = await worker_stream(client, STORY, max_tokens)
                        n = done.usage.completion_tokens
                        results["worker"].append((n - 1) / stream_s if stream_s > 0 else 0.0)
                        results["worker_reported"].append(done.timings.tokens_per_second)
                        counts["worker"].append(n)
                    elif side == "a":
                        llm_a.reset()
                        t = baselines.llama_chat_stream(llm_a, messages, max_tokens)
                        results["a_same_settings"].append(t.tokens_per_second)
                        counts["a_same_settings"].append(t.tokens)
                    elif side == "b":
                        llm_b.reset()
                        t = baselines.llama_chat_stream(llm_b, messages, max_tokens)
                        results["b_defaults"].append(t.tokens_per_second)
                        counts["b_defaults"].append(t.tokens)
                    else:
                        t = baselines.tight_loop(model_c, prompt_c, max_tokens, cores)
                        results["c_ceiling"].append(t.tokens_per_second)
                        counts["c_ceiling"].append(t.tokens)

    anyio.run(worker_rounds)
    model_c.close()
    med = {k: median(v) for k, v in results.items()}
    return {
        "tokens_per_second": med,
        "samples": results,
        "token_counts": counts,
        "ratio_worker_vs_ceiling": med["worker"] / med["c_ceiling"],
        "ratio_worker_vs_defaults": med["worker"] / med["b_defaults"],
        "ratio_worker_vs_same_settings": med["worker"] / med["a_same_settings"],
        "llama_defaults": {"n_threads": llm_b.n_threads if hasattr(llm_b, "n_threads") else None, "n_ctx": llm_b.n_ctx()},
    }


def bench_prompt_reuse(turns: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        ttft: list[float] = []
        cached: list[int] = []
        prompt_tokens: list[int] = []
        async with AsyncClient() as client:
            await client.load(n_ctx=4096, system_prompt="You are a helpful assistant. Answer in a few sentences.")
            for i in range(turns):
                done, first_s, _, _ = await worker_stream(client, f"Question {i + 1}: tell me one fact about the number {i + 7}.", 48)
                ttft.append(first_s * 1000)
                cached.append(done.usage.cached_tokens)
                prompt_tokens.append(done.usage.prompt_tokens)
        return {"ttft_ms": ttft, "cached_tokens": cached, "prompt_tokens": prompt_tokens, "ratio_last_vs_first": ttft[-1] / ttft[0]}

    return anyio.run(run)


COLD_INPROCESS = textwrap.dedent(
    """
    import time, sys
    t0 = float(sys.argv[1])
    from llama_cpp import Llama
    llm = Llama(model_path=sys.argv[2], verbose=False)
    for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            print(time.time() - t0)
            break
    """
)


def bench_cold_start(rounds: int) -> dict[str, Any]:
    worker_s: list[float] = []
    inproc_s: list[float] = []
    model_path = str(default_model_path())

    async def one_worker() -> float:
        t0 = time.perf_counter()
        async with AsyncClient() as client:
            await client.load()
            async with await client.generate("Hi", max_tokens=4) as stream:
                async for _ in stream:
                    first = time.perf_counter() - t0
                    break
        return first

    for r in range(rounds):
        for side in ("worker", "inproc") if r % 2 == 0 else ("inproc", "worker"):
            if side == "worker":
                worker_s.append(anyio.run(one_worker))
            else:
                out = subprocess.run([sys.executable, "-c", COLD_INPROCESS, repr(time.time()), model_path], capture_output=True, text=True, check=True)
                inproc_s.append(float(out.stdout.strip().splitlines()[-1]))
    return {"worker_s": worker_s, "inprocess_s": inproc_s, "worker_median_s": median(worker_s), "inprocess_median_s": median(inproc_s)}


def bench_prefill(rounds: int) -> dict[str, Any]:
    model_path = str(default_model_path())
    llm = baselines.make_llama(model_path, n_ctx=2048)  # library defaults, but room for the prompt
    worker_tps: list[float] = []
    lib_tps: list[float] = []

    async def run() -> None:
        async with AsyncClient() as client:
            await client.load(n_ctx=2048)
            for r in range(rounds):
                for side in ("worker", "lib") if r % 2 == 0 else ("lib", "worker"):
                    if side == "worker":
                        await client.reset()
                        await client.chat("warm", max_tokens=1, mode="completion")  # evict the prompt from the cache
                        done, _, _, _ = await worker_stream(client, LONG_PROMPT, 1, mode="completion")
                        evaluated = done.usage.prompt_tokens - done.usage.cached_tokens
                        worker_tps.append(evaluated / (done.timings.prompt_ms / 1000))
                    else:
                        n, secs = baselines.llama_prefill(llm, LONG_PROMPT)
                        lib_tps.append(n / secs)

    anyio.run(run)
    return {
        "worker_tokens_per_second": median(worker_tps),
        "library_defaults_tokens_per_second": median(lib_tps),
        "ratio": median(worker_tps) / median(lib_tps),
        "samples": {"worker": worker_tps, "library_defaults": lib_tps},
    }


def bench_abort_and_control(rounds: int, pings: int) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        decode_ms: list[float] = []
        prefill_ms: list[float] = []
        token_ms: list[float] = []
        ping_idle: list[float] = []
        ping_busy: list[float] = []
        async with AsyncClient() as client:
            await client.load(n_ctx=4096)
            for _ in range(pings):
                ping_idle.append(await client.ping() * 1000)
            for _ in range(rounds):
                # during decode
                await client.reset()
                stream = await client.generate(STORY, max_tokens=400, temperature=0.0)
                seen = 0
                async for _ in stream:
                    seen += 1
                    if seen == 20:
                        t0 = time.perf_counter()
                        await client.abort(stream.id)
                        break
                done = await stream.final()
                decode_ms.append((time.perf_counter() - t0) * 1000)
                if done.timings.tokens_per_second:
                    token_ms.append(1000 / done.timings.tokens_per_second)
                # 100 ms into a long prompt evaluation
                await client.reset()
                stream = await client.generate(LONG_PROMPT + f" variant {time.time()}", max_tokens=8, mode="completion")
                await anyio.sleep(0.1)  # the measurement's definition: abort 100 ms in
                t0 = time.perf_counter()
                await client.abort(stream.id)
                done = await stream.final()
                prefill_ms.append((time.perf_counter() - t0) * 1000)
            # ping while streaming
            await client.reset()
            stream = await client.generate(STORY, max_tokens=600, temperature=0.0)

            async def pinger() -> None:
                for _ in range(pings):
                    ping_busy.append(await client.ping() * 1000)
                    await anyio.sleep(0.005)

            async with anyio.create_task_group() as tg:
                tg.start_soon(pinger)
                async for _ in stream:
                    pass
        return {
            "abort_during_decode_ms": median(decode_ms),
            "one_token_ms": median(token_ms),
            "abort_100ms_into_prefill_ms": median(prefill_ms),
            "ping_idle_ms": median(ping_idle),
            "ping_while_streaming_ms": median(ping_busy),
            "samples": {"decode": decode_ms, "prefill": prefill_ms, "ping_idle": ping_idle, "ping_busy": ping_busy},
        }

    return anyio.run(run)


def bench_full_context(turns: int, n_ctx: int) -> dict[str, Any]:
    """A conversation that outgrows its context: what each turn evaluates once trimming starts."""

    async def run() -> dict[str, Any]:
        rows: list[dict[str, float]] = []
        async with AsyncClient() as client:
            await client.load(n_ctx=n_ctx, system_prompt="You are Captain Nemo. Always sign as Nemo.")
            for i in range(turns):
                done, first_s, _, _ = await worker_stream(client, f"Turn {i}: what do you see from the Nautilus now? Describe it in detail.", 64)
                rows.append({"truncated": done.truncated_messages, "prompt": done.usage.prompt_tokens, "cached": done.usage.cached_tokens, "ttft_ms": first_s * 1000})
        full = [r for r in rows if r["truncated"]]
        return {
            "n_ctx": n_ctx,
            "turns": turns,
            "trimmed_turns": len(full),
            "evaluated_tokens_in_trimmed_turns": sum(r["prompt"] - r["cached"] for r in full),
            "prompt_tokens_in_trimmed_turns": sum(r["prompt"] for r in full),
            "ttft_ms_trimmed_turns": median([r["ttft_ms"] for r in full]),
            "rows": rows,
        }

    return anyio.run(run)


def bench_codec(frames: int) -> dict[str, Any]:
    import json as stdjson
    import struct

    msg = P.Chunk(id=42, text=" hello")
    hdr = struct.Struct(">I")
    best_ours = best_std = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        reader = P.reply_reader()
        buf = b"".join(P.encode(msg) for _ in range(frames))
        n = len(reader.feed(buf))
        ours = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        parts = []
        for _ in range(frames):
            body = stdjson.dumps({"type": "chunk", "id": 42, "text": " hello"}).encode()
            parts.append(hdr.pack(len(body)) + body)
        data = b"".join(parts)
        pos = 0
        out = []
        while pos < len(data):
            (size,) = hdr.unpack_from(data, pos)
            out.append(stdjson.loads(data[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        std = len(out) / (time.perf_counter() - t0)
        best_ours, best_std = max(best_ours, ours), max(best_std, std)
    return {"protocol_frames_per_second": best_ours, "stdlib_json_frames_per_second": best_std, "ratio": best_ours / best_std}


def bench_memory() -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with AsyncClient() as client:
            info = await client.load()
            with open(f"/proc/{client.pid}/status", encoding="ascii") as f:
                rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            return {"rss_bytes": rss_kb * 1024, "model_file_bytes": info.size_bytes, "ratio": rss_kb * 1024 / info.size_bytes}

    return anyio.run(run)


# ---------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    reuse = results["prompt_reuse"]
    turns = list(range(1, len(reuse["ttft_ms"]) + 1))
    ax1.plot(turns, reuse["ttft_ms"], marker="o", label="time to first token (ms)")
    ax1b = ax1.twinx()
    ax1b.bar(turns, reuse["prompt_tokens"], alpha=0.2, color="gray", label="prompt tokens")
    ax1.set_xlabel("turn")
    ax1.set_ylabel("ms")
    ax1b.set_ylabel("prompt tokens (bars)")
    ax1.set_title("Time to first token per turn (worker)")
    dec = results["decode"]["tokens_per_second"]
    names = ["worker", "a_same_settings", "b_defaults", "c_ceiling"]
    labels = ["worker\n(via host)", "Llama,\nsame settings", "Llama,\ndefaults", "ctypes loop\n(ceiling)"]
    ax2.bar(labels, [dec[n] for n in names], color=["tab:blue", "tab:orange", "tab:red", "tab:green"])
    ax2.set_ylabel("tokens/s (median)")
    ax2.set_title("Decode throughput, greedy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _core_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if "decode" in results:
        d = results["decode"]
        rows += [
            ("decode tok/s: worker via host", f"{d['tokens_per_second']['worker']:.1f}"),
            ("decode tok/s: (a) Llama same settings", f"{d['tokens_per_second']['a_same_settings']:.1f}"),
            ("decode tok/s: (b) Llama defaults", f"{d['tokens_per_second']['b_defaults']:.1f}"),
            ("decode tok/s: (c) ctypes ceiling", f"{d['tokens_per_second']['c_ceiling']:.1f}"),
            ("worker / (c)  (goal >= 0.97)", f"{d['ratio_worker_vs_ceiling']:.3f}"),
            ("worker / (b)  (goal >= 1.5)", f"{d['ratio_worker_vs_defaults']:.2f}"),
        ]
    if "prompt_reuse" in results:
        r = results["prompt_reuse"]
        rows += [
            ("TTFT turn 1 / last (ms)", f"{r['ttft_ms'][0]:.1f} / {r['ttft_ms'][-1]:.1f}"),
            ("TTFT last / first  (goal <= 1.3)", f"{r['ratio_last_vs_first']:.2f}"),
        ]
    if "cold_start" in results:
        c = results["cold_start"]
        rows.append(("cold start to first token: worker / in-process (s)  (goal < 0.5)", f"{c['worker_median_s']:.3f} / {c['inprocess_median_s']:.3f}"))
    if "prefill" in results:
        p = results["prefill"]
        rows.append(("prefill tok/s: worker / library defaults  (goal >= 1.0x)", f"{p['worker_tokens_per_second']:.0f} / {p['library_defaults_tokens_per_second']:.0f} ({p['ratio']:.2f}x)"))
    if "abort_control" in results:
        a = results["abort_control"]
        rows += [
            ("abort during decode (ms) vs one token (ms)", f"{a['abort_during_decode_ms']:.1f} vs {a['one_token_ms']:.1f}"),
            ("abort 100 ms into prefill (ms)  (goal < 50)", f"{a['abort_100ms_into_prefill_ms']:.1f}"),
            ("ping idle / while streaming (ms)  (goal < 5)", f"{a['ping_idle_ms']:.2f} / {a['ping_while_streaming_ms']:.2f}"),
        ]
    if "full_context" in results:
        f = results["full_context"]
        rows.append((
            f"full context (n_ctx {f['n_ctx']}): tokens evaluated / prompt tokens in {f['trimmed_turns']} trimmed turns; median TTFT",
            f"{f['evaluated_tokens_in_trimmed_turns']:,} / {f['prompt_tokens_in_trimmed_turns']:,}; {f['ttft_ms_trimmed_turns']:.0f} ms",
        ))
    if "codec" in results:
        k = results["codec"]
        rows.append(("codec frames/s: protocol / stdlib json  (goal >= 200k, ahead)", f"{k['protocol_frames_per_second']:,.0f} / {k['stdlib_json_frames_per_second']:,.0f}"))
    if "memory" in results:
        m = results["memory"]
        rows.append(("worker RSS after load / model file (MB)", f"{m['rss_bytes'] / 1e6:.0f} / {m['model_file_bytes'] / 1e6:.0f} ({m['ratio']:.2f}x)"))
    return rows


def table(results: dict[str, Any]) -> str:
    rows = _core_rows(results)
    if "sessions" in results:
        rows += sessions.rows(results["sessions"])
    if "tools" in results:
        rows += tools.rows(results["tools"])
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"| {name.ljust(width)} | {value} |" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run, numbers mean nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "latest.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "plot.png")
    parser.add_argument("--only", action="append", help="run only this step (repeatable): decode, prompt_reuse, cold_start, prefill, abort_control, full_context, codec, memory, sessions, tools")
    args = parser.parse_args(argv)
    q = args.quick
    results: dict[str, Any] = {"machine": {"cores": B.usable_cores(), "cpu_amx": B.cpu_has_amx(), "llama_cpp_python": B.LIBRARY_VERSION}, "quick": q}
    steps = [
        ("decode", lambda: bench_decode(rounds=1 if q else 5, max_tokens=16 if q else 300)),
        ("prompt_reuse", lambda: bench_prompt_reuse(turns=3 if q else 20)),
        ("cold_start", lambda: bench_cold_start(rounds=1 if q else 5)),
        ("prefill", lambda: bench_prefill(rounds=1 if q else 5)),
        ("abort_control", lambda: bench_abort_and_control(rounds=1 if q else 7, pings=5 if q else 200)),
        ("full_context", lambda: bench_full_context(turns=10 if q else 40, n_ctx=512 if q else 1024)),
        ("codec", lambda: bench_codec(frames=2000 if q else 200_000)),
        ("memory", bench_memory),
        ("sessions", lambda: sessions.run_all(q)),
        ("tools", lambda: tools.run_all(q)),
    ]
    if args.only:
        steps = [(name, fn) for name, fn in steps if name in args.only]
    for name, fn in steps:
        t0 = time.perf_counter()
        results[name] = fn()
        print(f"[bench] {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(table(results))
    try:
        if "decode" in results and "prompt_reuse" in results:
            plot(results, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("LLAMA_WORKER_LOG_LEVEL", "error")
    sys.exit(main())
