"""Every Python example in the README runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.harness import REPO_ROOT
from tests.models import reasoning_fixture

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_opens_with_the_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert quick.split() == ["make", "demo", "make", "test"]


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_python_example_runs(index: int, tmp_path) -> None:
    script = tmp_path / f"example_{index}.py"
    script.write_text(EXAMPLES[index], encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()


def test_the_reasoning_example_shows_thoughts_with_a_thinking_model(tmp_path) -> None:
    """The example that reads `MODEL`, run with a fixture that thinks (DeepSeek-R1's template)."""
    (example,) = [e for e in EXAMPLES if 'os.environ.get("MODEL")' in e]
    script = tmp_path / "reasoning.py"
    script.write_text(example, encoding="utf-8")
    env = {**os.environ, "MODEL": str(reasoning_fixture(tmp_path, "deepseek-r1"))}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reasoning format: think_tags" in proc.stdout and "\x1b[2m" in proc.stdout
    spent = re.search(r"(\d+) of \d+ tokens spent thinking", proc.stdout)
    assert spent and 0 < int(spent.group(1)) <= 48


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2
