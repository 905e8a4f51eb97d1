"""`python -m bench --quick` runs end to end (so the harness does not rot).

It asserts that every step produced its figures, never what they are: speed
is measured by `make bench`, not tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO_ROOT

STEPS = {"decode", "prompt_reuse", "cold_start", "prefill", "abort_control", "full_context", "codec", "memory", "sessions"}


@pytest.mark.timeout(1200)  # ~40 s on an idle machine; far longer on a busy one (ggml's threads spin)
def test_quick_bench_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--plot", str(tmp_path / "plot.png")],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["quick"] is True and set(results) >= STEPS
    assert results["sessions"]["budget"]["within_budget"] is True
    assert "worker / (c)" in proc.stdout and "sessions: restore" in proc.stdout
