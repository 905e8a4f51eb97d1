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
