"""The version is read from one place."""

from __future__ import annotations

import json
import tomllib

import worker
from tests.harness import REPO_ROOT


def test_the_version_lives_in_one_place() -> None:
    """pyproject.toml reads it from worker.__version__; the npm package must agree."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "worker.__version__"}
    package = json.loads((REPO_ROOT / "host" / "node" / "package.json").read_text())
    assert package["version"] == worker.__version__
