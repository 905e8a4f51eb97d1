"""`make demo`: a scripted two-turn conversation, streamed, then the stats."""

from __future__ import annotations

import sys

from .cli import ProgressBar, stats_line
from .sync import Client

TURNS = [
    "Hi! In one sentence, what is a llama?",
    "And where do llamas live? Answer briefly.",
]


def main() -> int:
    with Client() as client:
        info = client.load(on_progress=ProgressBar(sys.stderr), system_prompt="You are a concise assistant.")
        print(f"model: {info.name} ({info.architecture}, {info.n_params / 1e6:.0f}M params, chat format {info.chat_format}, "
              f"n_ctx {info.n_ctx}, {info.n_threads} threads)\n")
        for turn in TURNS:
            print(f"> {turn}")
            stream = client.generate(turn, max_tokens=96, temperature=0.3, seed=7)
            for text in stream:
                print(text, end="", flush=True)
            print(f"\n{stats_line(stream.result)}\n")
        print(f"ping round trip: {client.ping() * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
