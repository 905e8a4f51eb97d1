"""`llama-chat`: chat with a model from the terminal, through a worker process.

Interactive by default; `--prompt TEXT` answers once and exits (`--json` for
the final result with usage and timings). Ctrl-C stops the current reply and
keeps the conversation; at the prompt it quits.

A reasoning model's thoughts go to stderr (dimmed on a terminal), the answer
to stdout, so `llama-chat --prompt ... > answer.txt` keeps the answer alone;
`--hide-thoughts` drops them, `/think on|off` and `--think` switch thinking.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import msgspec

from .exceptions import LlamaWorkerError
from .sync import Client

HELP = "commands: /reset  /system TEXT  /session [NAME]  /sessions  /think on|off|auto  /help  /quit   (Ctrl-C stops a reply)"
DIM, RESET = "\x1b[2m", "\x1b[0m"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-chat", description="Chat with a local model through llama-worker.")
    p.add_argument("--model", help="GGUF file (default: $LLAMA_WORKER_MODEL, else the bundled SmolLM2-135M)")
    p.add_argument("--prompt", help="answer this one prompt and exit")
    p.add_argument("--json", action="store_true", help="with --prompt: print the final result as JSON")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--n-ctx", type=int, help="context size in tokens (default 4096)")
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repeat-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    p.add_argument("--json-schema", metavar="FILE", help="constrain every reply to JSON valid against this JSON Schema file")
    p.add_argument("--no-stats", action="store_true", help="do not print the stats line after replies")
    p.add_argument("--think", choices=["on", "off", "auto"], default="auto", help="reasoning models: thinking on, off, or the model's default")
    p.add_argument("--reasoning-budget", type=int, metavar="N", help="reasoning models: at most N thought tokens, then the answer")
    p.add_argument("--hide-thoughts", action="store_true", help="reasoning models: do not show the thoughts")
    p.add_argument("--tools", metavar="FILE.py", help="let the model call this module's public functions (type-hinted parameters)")
    p.add_argument("--tool-choice", choices=["auto", "required", "none"], default="auto", help="with --tools: may, must, or must not call")
    p.add_argument("--max-rounds", type=int, default=8, help="with --tools: rounds of calls before the model must answer")
    return p


def load_tools(path: str) -> list[Any]:
    """The public functions a module defines (not those it imports)."""
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("llama_chat_tools", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"llama-chat: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's module: report, do not crash
        raise SystemExit(f"llama-chat: {path} failed to load: {type(exc).__name__}: {exc}") from None
    functions = [
        fn for name, fn in vars(module).items() if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__
    ]
    if not functions:
        raise SystemExit(f"llama-chat: {path} defines no public functions")
    return functions


THINK = {"on": True, "off": False, "auto": None}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p, "stop": args.stop}
    for name in ("top_k", "min_p", "repeat_penalty", "seed"):
        value = getattr(args, name)
        if value is not None:
            opts[name] = value
    if args.json_schema:
        opts["response_format"] = {"type": "json_schema", "schema": _read_schema(args.json_schema)}
    if args.think != "auto" or args.reasoning_budget is not None:
        opts["reasoning"] = {"enabled": THINK[args.think], "budget_tokens": args.reasoning_budget}
    return opts


def _read_schema(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    except OSError as exc:
        raise SystemExit(f"llama-chat: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SystemExit(f"llama-chat: {path} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise SystemExit(f"llama-chat: {path} must hold a JSON object (a JSON Schema)")
    return schema


class ProgressBar:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.enabled = out.isatty()

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * fraction)
        self.out.write(f"\rloading model [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%")
        self.out.flush()

    def done(self) -> None:
        if self.enabled:
            self.out.write("\r" + " " * 60 + "\r")
            self.out.flush()


def stats_line(result: Any) -> str:
    t = result.timings
    u = result.usage
    thought = f" ({u.reasoning_tokens} thinking)" if u.reasoning_tokens else ""
    return (
        f"[{u.completion_tokens} tokens{thought}, {t.tokens_per_second:.1f} tok/s, "
        f"first token {t.ttft_ms:.0f} ms, prompt {u.prompt_tokens} ({u.cached_tokens} cached), {result.stop_reason}]"
    )


class Thoughts:
    """Where thought text goes: stderr, dimmed on a terminal, and set apart from the answer."""

    def __init__(self, out: TextIO, hide: bool) -> None:
        self.out = out
        self.hide = hide
        self.dim = out.isatty()
        self.open = False

    def write(self, text: str) -> None:
        if self.hide:
            return
        if not self.open:
            self.out.write(DIM + "(thinking) " if self.dim else "(thinking) ")
            self.open = True
        self.out.write(text)
        self.out.flush()

    def end(self) -> None:
        if self.open:
            self.out.write((RESET if self.dim else "") + "\n")
            self.out.flush()
            self.open = False


def act_reply(client: Client, text: str, options: dict[str, Any], tools: list[Any], args: argparse.Namespace, out: TextIO) -> None:
    """One turn with tools: calls and their results go to stderr, the answer to stdout."""
    thoughts = Thoughts(sys.stderr, args.hide_thoughts)

    def on_chunk(piece: str) -> None:
        thoughts.end()
        out.write(piece)
        out.flush()

    def on_call(call: Any) -> None:
        thoughts.end()
        sys.stderr.write(f"-> {call.name}({json.dumps(call.arguments, ensure_ascii=False)})\n")

    def on_result(call: Any, result: str) -> None:
        sys.stderr.write(f"<- {call.name}: {result}\n")

    result = client.act(
        text,
        tools=tools,
        max_rounds=args.max_rounds,
        on_chunk=on_chunk,
        on_reasoning=thoughts.write,
        on_tool_call=on_call,
        on_tool_result=on_result,
        tool_choice=args.tool_choice,
        **{k: v for k, v in options.items() if k not in ("tools", "tool_choice")},
    )
    thoughts.end()
    out.write("\n")
    if not args.no_stats:
        sys.stderr.write(stats_line(result) + "\n")


def reply(client: Client, text: str, options: dict[str, Any], out: TextIO, show_stats: bool, hide_thoughts: bool = False) -> None:
    stream = client.generate(text, **options)
    thoughts = Thoughts(sys.stderr, hide_thoughts)
    try:
        for part in stream.parts():
            if part.kind == "reasoning":
                thoughts.write(part.text)
                continue
            thoughts.end()
            out.write(part.text)
            out.flush()
    except KeyboardInterrupt:
        pass  # Ctrl-C: abort below (a no-op if SyncGeneration already did); the partial reply stays in the session
    result = stream.result if stream.result is not None else stream.abort()
    thoughts.end()
    out.write("\n")
    if show_stats:
        sys.stderr.write(stats_line(result) + "\n")
        sys.stderr.flush()


def describe_sessions(client: Client, current: str) -> str:
    lines = []
    for info in client.sessions().sessions:
        mark = "*" if info.session == current else " "
        cached = "KV in context" if info.active else "KV in RAM" if info.kv_cached else "KV not cached"
        lines.append(f"{mark} {info.session}: {info.messages} messages, {info.tokens} tokens, {cached}")
    return "\n".join(lines)


def interactive(client: Client, args: argparse.Namespace, tools: list[Any]) -> None:
    options = _options(args)
    session = "default"
    assert client.model is not None, "interactive() runs after load()"
    reasons = f", reasons: {client.model.reasoning}" if client.model.reasoning != "none" else ""
    print(f"model: {client.model.name} ({client.model.chat_format}, n_ctx {client.model.n_ctx}{reasons}). {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return
        if text == "/help":
            print(HELP, file=sys.stderr)
            continue
        if text == "/sessions":
            print(describe_sessions(client, session), file=sys.stderr)
            continue
        if text == "/session" or text.startswith("/session "):
            name = text[len("/session") :].strip()
            if not name:
                print(f"(session: {session})", file=sys.stderr)
                continue
            session = name
            options["session"] = session
            info = client.session(session).info()
            print(f"(session: {session}, {info.messages} messages)", file=sys.stderr)
            continue
        if text == "/reset":
            client.reset(session=session)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text == "/think" or text.startswith("/think "):
            mode = text[len("/think") :].strip()
            if mode not in THINK:
                print("usage: /think on|off|auto", file=sys.stderr)
                continue
            budget = args.reasoning_budget
            options["reasoning"] = {"enabled": THINK[mode], "budget_tokens": budget}
            support = "" if client.model.reasoning != "none" else " (this model does not reason: no effect)"
            print(f"(thinking {mode}){support}", file=sys.stderr)
            continue
        if text.startswith("/system"):
            prompt = text[len("/system") :].strip()
            client.reset(system_prompt=prompt, session=session)
            print(f"(system prompt {'set' if prompt else 'removed'}; conversation cleared)", file=sys.stderr)
            continue
        try:
            if tools:
                act_reply(client, text, options, tools, args, sys.stdout)
            else:
                reply(client, text, options, sys.stdout, not args.no_stats, args.hide_thoughts)
        except LlamaWorkerError as exc:
            print(f"error: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _options(args)  # a bad --json-schema file (or --tools module) fails before the worker starts
    tools = load_tools(args.tools) if args.tools else []
    try:
        with Client() as client:
            bar = ProgressBar(sys.stderr)
            load_opts: dict[str, Any] = {}
            if args.n_ctx is not None:
                load_opts["n_ctx"] = args.n_ctx
            if args.system is not None:
                load_opts["system_prompt"] = args.system
            client.load(args.model, on_progress=bar, **load_opts)
            bar.done()
            if args.prompt is None:
                interactive(client, args, tools)
                return 0
            if tools:
                act_reply(client, args.prompt, _options(args), tools, args, sys.stdout)
            elif args.json:
                result = client.chat(args.prompt, **_options(args))
                print(json.dumps(msgspec.to_builtins(result), ensure_ascii=False, indent=2))
            else:
                reply(client, args.prompt, _options(args), sys.stdout, not args.no_stats, args.hide_thoughts)
            return 0
    except LlamaWorkerError as exc:
        print(f"llama-chat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
