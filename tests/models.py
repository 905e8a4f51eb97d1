"""Fixture models made from the default GGUF (no hub downloads here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from worker.model_locator import default_model_path


def rewrite_gguf(out: Path, *args: str) -> Path:
    """A copy of the default model with metadata changed by gguf's own tool."""
    if not out.exists():
        subprocess.run(
            [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force", *args, str(default_model_path()), str(out)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return out


def without_template(folder: Path) -> Path:
    return rewrite_gguf(folder / "no-template.gguf", "--remove-metadata", "tokenizer.chat_template")


def with_template(folder: Path, name: str, template: str) -> Path:
    return rewrite_gguf(folder / name, "--chat-template", template)


TEMPLATES = Path(__file__).parent / "templates"

#: Fixture name -> template file: one per reasoning family the worker supports.
REASONING_FIXTURES = {
    "qwen3": "qwen3.jinja",
    "deepseek-r1": "deepseek-r1-distill.jinja",
    "gpt-oss": "gpt-oss.jinja",
    "smollm3": "smollm3.jinja",
    "kept-thoughts": "chatml-kept-thoughts.jinja",
}

#: Fixture name -> template file: one per tool-call family (Qwen3 is the Hermes-style one).
TOOL_FIXTURES = {
    "hermes": "hermes-3-tool-use.jinja",
    "qwen3": "qwen3.jinja",
    "llama3": "llama-3.1.jinja",
    "mistral": "mistral-nemo.jinja",
}


def reasoning_fixture(folder: Path, name: str) -> Path:
    """The default model carrying a published reasoning template (see tests/templates/README.md)."""
    template = (TEMPLATES / REASONING_FIXTURES[name]).read_text()
    return with_template(folder, f"{name}.gguf", template)


def tool_fixture(folder: Path, name: str) -> Path:
    """The default model carrying a published tool-calling template."""
    template = (TEMPLATES / TOOL_FIXTURES[name]).read_text()
    return with_template(folder, f"tools-{name}.gguf", template)


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.models reasoning|tools DIR`: write those fixtures, print {name: path} as JSON.

    The Node suite uses it to get the same fixtures.
    """
    import json

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("reasoning", "tools"):
        print("usage: python -m tests.models reasoning|tools DIR", file=sys.stderr)
        return 2
    folder = Path(args[1])
    folder.mkdir(parents=True, exist_ok=True)
    if args[0] == "tools":
        print(json.dumps({name: str(tool_fixture(folder, name)) for name in TOOL_FIXTURES}))
    else:
        print(json.dumps({name: str(reasoning_fixture(folder, name)) for name in REASONING_FIXTURES}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
