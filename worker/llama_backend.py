"""The one module that drives llama.cpp (through llama-cpp-python's ctypes API).

(`structured.py` also imports llama-cpp-python, for its pure-Python JSON
Schema to GBNF converter; the grammar it produces is compiled here.)

We use its low-level ctypes mirror of `llama.h`, not the high-level `Llama`
class, because the worker needs what `Llama` hides: a load progress callback
that can cancel, the switch for llama.cpp's extra CPU buffer types (they
segfault on CPUs with AMX), an abort callback that stops a prompt evaluation,
our own log callback, no `dup2` of /dev/null over the whole process during a
load, and a decode loop with almost no Python per token.

Everything version-specific lives here, so a new llama-cpp-python release is a
change to this file and its tests (`tests/test_llama_backend.py`) only.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import llama_cpp
from llama_cpp import llama_cpp as C

#: The llama-cpp-python releases this module was written and tested against
#: (also pinned in pyproject.toml).
SUPPORTED_VERSIONS = ">=0.3.36,<0.4"
LIBRARY_VERSION: str = llama_cpp.__version__

log = logging.getLogger("llama.cpp")
prompt_log = logging.getLogger("worker.prompt")

# ggml log levels (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
_GGML_TO_LOGGING = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_GGML_CONT = 5


class LlamaError(Exception):
    """A llama.cpp call failed; the message is meant for a human."""


class DecodeAborted(LlamaError):
    """A prompt evaluation was stopped by the abort callback."""


# ---------------------------------------------------------------------------
# Process-wide set-up: backend, logging
# ---------------------------------------------------------------------------


class _LogBridge:
    """Routes llama.cpp's log lines to Python logging.

    llama-cpp-python's own callback maps levels with an outdated table (with
    verbose=False warnings print and errors are hidden), so we replace it. We
    also keep the last error lines: llama.cpp explains a failed load only in
    its log, and that explanation belongs in our `load_failed` message.
    """

    def __init__(self) -> None:
        self._partial = ""
        self._level = logging.INFO
        self._lock = threading.Lock()
        self.recent_errors: deque[str] = deque(maxlen=8)
        self._callback = C.llama_log_callback(self._on_log)

    def _on_log(self, level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
        try:
            msg = (text or b"").decode("utf-8", errors="replace")
            with self._lock:
                if level != _GGML_CONT:
                    self._level = _GGML_TO_LOGGING.get(level, logging.INFO)
                self._partial += msg
                if not self._partial.endswith("\n"):
                    return
                lines, self._partial = self._partial.rstrip("\n"), ""
                pylevel = self._level
            for line in lines.splitlines():
                if pylevel >= logging.ERROR:
                    self.recent_errors.append(line.strip())
                log.log(pylevel, "%s", line)
        except Exception:  # noqa: BLE001 - never let an exception cross into C
            pass

    def install(self) -> None:
        C.llama_log_set(self._callback, ctypes.c_void_p(0))


_log_bridge = _LogBridge()
_init_lock = threading.Lock()
_initialized = False


def initialize_backend() -> None:
    """Install our log callback and initialise llama.cpp's backends (once)."""
    global _initialized
    with _init_lock:
        if _initialized:
            return
        _log_bridge.install()
        C.llama_backend_init()
        _initialized = True


def recent_error_lines() -> list[str]:
    return list(_log_bridge.recent_errors)


def clear_recent_errors() -> None:
    _log_bridge.recent_errors.clear()


# ---------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------


def cpuinfo_has_amx(cpuinfo: str) -> bool:
    """True when a /proc/cpuinfo text lists an AMX flag (amx_tile, amx_int8, amx_bf16...)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return any(flag.startswith("amx") for flag in line.split(":", 1)[-1].split())
    return False


@functools.cache
def cpu_has_amx() -> bool:
    """True when the CPU advertises AMX (Sapphire Rapids and newer Xeons).

    llama.cpp's AMX buffer type segfaults on the first decode there
    (llama.cpp issue #20824), whatever the build flags; turning the extra
    buffer types off avoids it at a small cost in prompt speed.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return cpuinfo_has_amx(f.read())
    except OSError:
        return False


def usable_cores() -> int:
    """Cores this process may run on (affinity, cgroups' cpusets), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def supports_gpu_offload() -> bool:
    return bool(C.llama_supports_gpu_offload())


def system_info() -> str:
    raw = C.llama_print_system_info()
    return raw.decode("utf-8", errors="replace") if raw else ""


def backends_in(info: str) -> list[str]:
    """Backend names in a `llama_print_system_info` text ("CUDA : ARCHS = 900 | ... | CPU : AVX = 1 | ...")."""
    names: list[str] = []
    for segment in info.split("|"):
        if " : " in segment:
            name = segment.split(" : ", 1)[0].strip()
            if name and name not in names:
                names.append(name)
    return names


@functools.cache
def backends() -> list[str]:
    """The compute backends this llama.cpp build registered (CPU, CUDA, Metal, Vulkan...)."""
    initialize_backend()
    return backends_in(system_info()) or ["CPU"]


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelParams:
    n_gpu_layers: int = 0
    use_extra_bufts: bool = True
    use_mmap: bool = True


class Model:
    """A loaded GGUF model and its vocabulary. Free with `close()`.

    Not thread-safe. The model thread owns it; the vocabulary reads
    (`tokenize`, `detokenize`, `token_text`) also run on the token thread,
    under `LlamaWorker`'s guard lock, so never while the model is loaded or freed.
    """

    def __init__(self, path: str, params: ModelParams, progress: Callable[[float], bool] | None = None) -> None:
        initialize_backend()
        mp = C.llama_model_default_params()
        mp.n_gpu_layers = params.n_gpu_layers
        mp.use_extra_bufts = params.use_extra_bufts
        mp.load_mode = C.LLAMA_LOAD_MODE_MMAP if params.use_mmap else C.LLAMA_LOAD_MODE_NONE

        def on_progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
            if progress is None:
                return True
            try:
                return bool(progress(float(fraction)))
            except Exception:  # noqa: BLE001 - never let an exception cross into C
                log.exception("load progress callback failed")
                return False

        # The ctypes callback must outlive the C call that uses it.
        self._progress_cb = C.llama_progress_callback(on_progress)
        mp.progress_callback = self._progress_cb
        clear_recent_errors()
        ptr = C.llama_model_load_from_file(os.fsencode(path), mp)
        if not ptr:
            raise LlamaError("; ".join(recent_error_lines()) or "llama.cpp could not load the model")
        self._ptr: C.llama_model_p | None = ptr
        self.path = path
        self.params = params
        self.vocab = C.llama_model_get_vocab(ptr)
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._grammars: dict[str, ctypes.c_void_p] = {}

    @property
    def ptr(self) -> C.llama_model_p:
        if self._ptr is None:
            raise LlamaError("model is closed")
        return self._ptr

    def close(self) -> None:
        for proto in self._grammars.values():
            C.llama_sampler_free(proto)
        self._grammars.clear()
        if self._ptr is not None:
            C.llama_model_free(self._ptr)
            self._ptr = None

    def grammar(self, gbnf: str) -> ctypes.c_void_p:
        """A parsed grammar sampler for this vocabulary, kept as a prototype to clone.

        Parsing happens once per grammar; each generation clones the prototype
        (the clone carries the parse state). Raises `LlamaError` when llama.cpp
        cannot parse the grammar.
        """
        proto = self._grammars.get(gbnf)
        if proto is None:
            clear_recent_errors()
            proto = C.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
            if not proto:
                raise LlamaError("; ".join(recent_error_lines()) or "llama.cpp could not parse the grammar")
            if len(self._grammars) >= 32:
                C.llama_sampler_free(self._grammars.pop(next(iter(self._grammars))))
            self._grammars[gbnf] = proto
        return proto

    # -- metadata --------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        ptr = self.ptr
        for i in range(C.llama_model_meta_count(ptr)):
            key = _read_str(functools.partial(C.llama_model_meta_key_by_index, ptr, i))
            val = _read_str(functools.partial(C.llama_model_meta_val_str_by_index, ptr, i))
            if key is not None and val is not None:
                out[key] = val
        return out

    def meta(self, key: str) -> str | None:
        return _read_str(lambda buf, n: C.llama_model_meta_val_str(self.ptr, key.encode(), buf, n))

    def fingerprint(self, metadata: dict[str, str], size_bytes: int) -> dict[str, object]:
        """What identifies this model to a saved KV state: shape, vocabulary and a digest of its metadata.

        Hashing the weights would take seconds for a large model; the
        metadata (architecture, sizes, tokenizer, template) tells models
        apart for this purpose, and the file size catches re-quantisations.
        """
        digest = hashlib.sha256(json.dumps(sorted(metadata.items())).encode("utf-8", "replace")).hexdigest()
        return {
            "name": metadata.get("general.name", ""),
            "architecture": metadata.get("general.architecture", ""),
            "size_bytes": size_bytes,
            "n_params": self.n_params,
            "n_vocab": self.n_vocab,
            "n_layer": self.n_layer,
            "n_embd": int(C.llama_model_n_embd(self.ptr)),
            "metadata_sha256": digest,
        }

    def chat_template(self) -> str | None:
        raw = C.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    @property
    def n_ctx_train(self) -> int:
        return int(C.llama_model_n_ctx_train(self.ptr))

    @property
    def n_params(self) -> int:
        return int(C.llama_model_n_params(self.ptr))

    @property
    def n_layer(self) -> int:
        return int(C.llama_model_n_layer(self.ptr))

    @property
    def n_swa(self) -> int:
        return int(C.llama_model_n_swa(self.ptr))

    # -- vocabulary ------------------------------------------------------

    @property
    def bos(self) -> int:
        return int(C.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(C.llama_vocab_eos(self.vocab))

    @property
    def add_bos(self) -> bool:
        return bool(C.llama_vocab_get_add_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def token_text(self, token: int) -> str:
        raw = C.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        arr = (C.llama_token * capacity)()
        n = C.llama_tokenize(self.vocab, data, len(data), arr, capacity, add_special, parse_special)
        if n < 0:  # buffer too small: -n is what it needs
            capacity = -n
            arr = (C.llama_token * capacity)()
            n = C.llama_tokenize(self.vocab, data, len(data), arr, capacity, add_special, parse_special)
            if n < 0:
                raise LlamaError("tokenization failed")
        return list(arr[:n])

    def detokenize(self, tokens: Sequence[int], *, render_special: bool) -> str:
        """Text of a token sequence (as a whole, so multi-byte characters split across tokens join)."""
        if not tokens:
            return ""
        for tok in tokens:
            if not 0 <= tok < self.n_vocab:
                raise ValueError(f"token id {tok} is not in the vocabulary (0..{self.n_vocab - 1})")
        arr = (C.llama_token * len(tokens))(*tokens)
        capacity = max(64, len(tokens) * 16)
        buf = ctypes.create_string_buffer(capacity)
        n = C.llama_detokenize(self.vocab, arr, len(tokens), buf, capacity, False, render_special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_detokenize(self.vocab, arr, len(tokens), buf, -n, False, render_special)
            if n < 0:
                raise LlamaError("detokenization failed")
        return buf.raw[:n].decode("utf-8", errors="replace")

    def single_token(self, text: str) -> int | None:
        """The id of `text` when the vocabulary has it as one special token."""
        toks = self.tokenize(text, add_special=False, parse_special=True)
        return toks[0] if len(toks) == 1 else None

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (control tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = self._piece_buf
        n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        out = buf.raw[: max(n, 0)]
        self._pieces[token] = out
        return out


def _read_str(call: Callable[[ctypes.Array[ctypes.c_char], int], int]) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = call(buf, len(buf))
    if n < 0:
        return None
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        n = call(buf, len(buf))
        if n < 0:
            return None
    return buf.raw[:n].decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------
# Context: KV cache and decoding
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int
    n_batch: int = 512
    n_threads: int = 1
    flash_attn: bool | None = False
    """None: llama.cpp decides."""
    kv_type: str = "f16"
    """The KV cache's element type, keys and values (a key of `KV_TYPES`)."""


#: KV cache element types by name (what a saved session's layout records).
KV_TYPES = {"f16": C.GGML_TYPE_F16, "q8_0": C.GGML_TYPE_Q8_0}


#: Context shift: tokens of the prompt that must match the cache after the cut...
SHIFT_PROBE = 16
#: ...and the fewest kept tokens that make a shift worth it.
SHIFT_MIN_KEEP = 32


class Context:
    """A llama.cpp context on sequence 0, tracking which tokens its KV cache holds.

    Knowing the cached tokens is what makes prompt reuse exact: `evaluate`
    keeps the longest common prefix and evaluates only the rest, and reports
    how much it reused.
    """

    def __init__(self, model: Model, params: ContextParams) -> None:
        cp = C.llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = params.n_batch
        cp.n_ubatch = params.n_batch
        cp.n_seq_max = 1
        cp.n_threads = params.n_threads
        cp.n_threads_batch = params.n_threads
        cp.no_perf = True
        cp.type_k = cp.type_v = KV_TYPES[params.kv_type]
        if params.flash_attn is None:
            cp.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_AUTO
        else:
            cp.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED if params.flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        clear_recent_errors()
        ptr = C.llama_init_from_model(model.ptr, cp)
        if not ptr:
            raise LlamaError("; ".join(recent_error_lines()) or "llama.cpp could not create a context")
        self._ptr: C.llama_context_p | None = ptr
        self.model = model
        self.params = params
        self.n_ctx = int(C.llama_n_ctx(ptr))
        self.n_batch = int(C.llama_n_batch(ptr))
        self._memory = C.llama_get_memory(ptr)
        #: Tokens whose keys and values are in the cache, in position order.
        self.tokens: list[int] = []
        #: How many tokens the last `evaluate` took from the cache (also when it was aborted).
        self.last_reused = 0
        # Context shift needs a cache that can move positions (not recurrent, not sliding-window).
        self._can_shift = bool(C.llama_memory_can_shift(self._memory)) and model.n_swa == 0
        self._one = (C.llama_token * 1)()
        self._should_abort: Callable[[], bool] = lambda: False

        def on_abort(_data: ctypes.c_void_p) -> bool:
            try:
                return bool(self._should_abort())
            except Exception:  # noqa: BLE001
                return True

        self._abort_cb = C.ggml_abort_callback(on_abort)
        self._no_abort_cb = C.ggml_abort_callback()

    @property
    def ptr(self) -> C.llama_context_p:
        if self._ptr is None:
            raise LlamaError("context is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            C.llama_free(self._ptr)
            self._ptr = None
            self.tokens = []

    # -- cache management -----------------------------------------------

    def _truncate(self, n_keep: int) -> int:
        """Keep the first `n_keep` cached tokens; return how many were kept."""
        if n_keep >= len(self.tokens):
            return len(self.tokens)
        if n_keep > 0 and C.llama_memory_seq_rm(self._memory, 0, n_keep, -1):
            del self.tokens[n_keep:]
            return n_keep
        C.llama_memory_clear(self._memory, True)
        self.tokens = []
        return 0

    def clear(self) -> None:
        self._truncate(0)

    def _shift_for(self, tokens: Sequence[int]) -> int:
        """Context shift: reuse the cache when `tokens` is it with a span cut out.

        When a conversation outgrows the context, its oldest turns are dropped
        and the prompt becomes system prompt + later turns: the cached tokens
        with a span removed after a common prefix. Instead of evaluating all
        the later turns again (seconds, every turn, once a chat is full), drop
        that span from the KV cache and move what follows it back (llama.cpp
        re-rotates the keys). Their values were computed with the dropped
        turns in view, as with llama.cpp's own context shift; that is the
        price of a full chat staying fast. Returns the tokens it kept (0: no shift).
        """
        cached = self.tokens
        if not self._can_shift or len(cached) < SHIFT_MIN_KEEP:
            return 0
        p = 0
        limit = min(len(cached), len(tokens))
        while p < limit and cached[p] == tokens[p]:
            p += 1
        probe = list(tokens[p : p + SHIFT_PROBE])
        if p >= len(cached) or len(probe) < SHIFT_PROBE:
            return 0
        first, n = probe[0], len(probe)
        start = next((i for i in range(p + 1, len(cached) - n + 1) if cached[i] == first and cached[i : i + n] == probe), -1)
        if start < 0:
            return 0
        d, m = start - p, n
        while start + m < len(cached) and p + m < len(tokens) and cached[start + m] == tokens[p + m]:
            m += 1
        if m < SHIFT_MIN_KEEP or not C.llama_memory_seq_rm(self._memory, 0, p, start):
            return 0
        C.llama_memory_seq_add(self._memory, 0, start, -1, -d)
        self.tokens = cached[:p] + cached[start:]
        self._truncate(p + m)
        prompt_log.debug("context shift: dropped %d cached tokens at %d, kept the %d after them", d, p, m)
        return m

    def reusable_prefix(self, tokens: Sequence[int]) -> int:
        cached = self.tokens
        n = 0
        limit = min(len(cached), len(tokens))
        while n < limit and cached[n] == tokens[n]:
            n += 1
        # The last prompt token must be evaluated again to get its logits.
        if n == len(tokens):
            n -= 1
        n_swa = self.model.n_swa
        if n > 0 and n_swa > 0:
            # A sliding-window cache may have dropped the positions that the
            # reused prefix still needs (llama-server applies the same rule).
            pos_min = int(C.llama_memory_seq_pos_min(self._memory, 0))
            if pos_min > max(0, n - n_swa):
                n = 0
        return max(n, 0)

    # -- evaluation ------------------------------------------------------

    def evaluate(self, tokens: Sequence[int], should_abort: Callable[[], bool], allow_shift: bool = False) -> int:
        """Make the cache hold exactly `tokens`; return how many were reused.

        Raises `DecodeAborted` when `should_abort` turns true during the
        evaluation; the cache then holds a valid prefix of `tokens`.
        """
        if not tokens:
            raise LlamaError("nothing to evaluate")
        if len(tokens) > self.n_ctx:
            raise LlamaError(f"{len(tokens)} tokens do not fit a context of {self.n_ctx}")
        # Only where the caller cut turns out of the conversation.
        shifted = self._shift_for(tokens) if allow_shift else 0
        reused = self._truncate(self.reusable_prefix(tokens))
        self.last_reused = reused
        prompt_log.debug("evaluating %d new prompt tokens (%d reused)", len(tokens) - reused, reused)
        pos = reused
        if shifted:
            # llama.cpp re-rotates the moved keys at the start of the next decode, in a
            # graph of its own; an abort there would leave them half-moved. So decode the
            # first token now, before the abort callback is installed (a few ms).
            self._decode_prompt_batch(tokens[pos : pos + 1])
            pos += 1
        # The abort callback runs once per graph node (~600 per token here),
        # which costs 5-8% of decode speed, so it is installed only for the
        # prompt, where a stop would otherwise wait for the whole batch.
        self._should_abort = should_abort
        C.llama_set_abort_callback(self.ptr, self._abort_cb, None)
        try:
            while pos < len(tokens):
                if should_abort():
                    raise DecodeAborted("aborted")
                batch = tokens[pos : pos + self.n_batch]
                self._decode_prompt_batch(batch, should_abort)
                pos += len(batch)
        finally:
            C.llama_set_abort_callback(self.ptr, self._no_abort_cb, None)
            self._should_abort = lambda: False
        return reused

    def _decode_prompt_batch(self, batch: Sequence[int], should_abort: Callable[[], bool] = lambda: False) -> None:
        arr = (C.llama_token * len(batch))(*batch)
        rc = C.llama_decode(self.ptr, C.llama_batch_get_one(arr, len(batch)))
        if rc != 0:
            # Whatever part of this batch reached the cache is dropped.
            self._resync()
            if rc == 2 or should_abort():
                raise DecodeAborted("aborted")
            raise LlamaError(f"llama_decode returned {rc} while evaluating the prompt")
        self.tokens.extend(batch)

    def _resync(self) -> None:
        if not C.llama_memory_seq_rm(self._memory, 0, len(self.tokens), -1):
            C.llama_memory_clear(self._memory, True)
            self.tokens = []

    # -- saved KV state (chat sessions) -----------------------------------

    def save_state(self) -> bytearray:
        """The KV state of the cached tokens (sequence 0), as llama.cpp serialises it.

        A bytearray, filled in place: for a long conversation this is tens of
        megabytes, and every extra copy shows in the time to switch sessions.
        """
        if not self.tokens:
            return bytearray()
        size = int(C.llama_state_seq_get_size(self.ptr, 0))
        buf = bytearray(size)
        written = int(C.llama_state_seq_get_data(self.ptr, (ctypes.c_uint8 * size).from_buffer(buf), size, 0))
        if written == 0:
            raise LlamaError("llama.cpp could not copy the KV state")
        del buf[written:]
        return buf

    def load_state(self, data: bytes | bytearray, tokens: Sequence[int]) -> None:
        """Make the cache hold `tokens` from a `save_state` blob (which is only read).

        On failure the cache is left empty (never half-restored) and
        `LlamaError` is raised.
        """
        if len(tokens) > self.n_ctx:
            raise LlamaError(f"{len(tokens)} saved tokens do not fit a context of {self.n_ctx}")
        self.clear()
        if not data or not tokens:
            return
        view = (ctypes.c_uint8 * len(data)).from_buffer(data) if isinstance(data, bytearray) else (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        read = int(C.llama_state_seq_set_data(self.ptr, view, len(data), 0))
        if read == 0:
            C.llama_memory_clear(self._memory, True)
            raise LlamaError("llama.cpp refused the saved KV state (another model or context layout)")
        n_pos = int(C.llama_memory_seq_pos_max(self._memory, 0)) + 1
        if n_pos != len(tokens):
            C.llama_memory_clear(self._memory, True)
            raise LlamaError(f"the saved KV state holds {n_pos} positions, not the {len(tokens)} tokens it claims")
        self.tokens = list(tokens)

    @property
    def layout(self) -> dict[str, object]:
        """What a saved KV state depends on besides the model."""
        return {
            "flash_attn": self.params.flash_attn,
            "n_seq_max": 1,
            "type_k": self.params.kv_type,
            "type_v": self.params.kv_type,
            # llama.cpp's state format, and its automatic flash-attention choice, can change between builds.
            "llama_cpp_python": LIBRARY_VERSION,
        }

    def append(self, tokens: Sequence[int]) -> None:
        """Put tokens the worker writes for the model into the cache (an end-of-thought marker)."""
        if len(self.tokens) + len(tokens) > self.n_ctx:
            raise LlamaError(f"{len(tokens)} more tokens do not fit the context")
        if tokens:
            self._decode_prompt_batch(tokens)

    def decode_one(self, token: int) -> None:
        """Append one token to the cache (the hot path of generation)."""
        self._one[0] = token
        rc = C.llama_decode(self._ptr, C.llama_batch_get_one(self._one, 1))
        if rc != 0:
            self._resync()
            raise LlamaError(f"llama_decode returned {rc}")
        self.tokens.append(token)


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int


class Sampler:
    """llama.cpp's native sampler chain: one call per token, no logits in Python.

    `history` (the prompt's tail) is shown to the repetition penalty only;
    a `grammar` (a prototype from `Model.grammar`) is cloned into the chain
    right after it, so every later stage sees only tokens the grammar allows.
    """

    def __init__(self, model: Model, params: SamplingParams, history: Sequence[int] = (), grammar: ctypes.c_void_p | None = None) -> None:
        cparams = C.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = C.llama_sampler_chain_init(cparams)
        if not chain:
            raise LlamaError("could not create a sampler")
        self._ptr = chain
        add = functools.partial(C.llama_sampler_chain_add, chain)
        if params.repeat_penalty != 1.0 and params.repeat_last_n != 0:
            penalties = C.llama_sampler_init_penalties(model.n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0)
            for tok in history:
                C.llama_sampler_accept(penalties, tok)
            add(penalties)
        if grammar is not None:
            clone = C.llama_sampler_clone(grammar)
            if not clone:
                self.close()
                raise LlamaError("could not copy the grammar sampler")
            add(clone)
        if params.temperature <= 0.0:
            add(C.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(C.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(C.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(C.llama_sampler_init_min_p(params.min_p, 1))
            add(C.llama_sampler_init_temp(params.temperature))
            add(C.llama_sampler_init_dist(params.seed))

    def sample(self, context: Context) -> int:
        return int(C.llama_sampler_sample(self._ptr, context._ptr, -1))

    def close(self) -> None:
        if self._ptr is not None:
            C.llama_sampler_free(self._ptr)
            self._ptr = None

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
