"""In-process llama.cpp: one `Llama` per model per process, one scheduler thread per model.

Why this shape:
- Loading a model costs time and memory, so each model is loaded once. Every use of it runs on its
  own scheduler thread (`batching.BatchScheduler`): requests from sync callers and from any event
  loop are queued to it, and an event loop never blocks on llama.cpp (it awaits an asyncio queue fed
  with `call_soon_threadsafe`). Waiting requests hold no thread; a request cancelled while queued
  never runs.
- Requests to one model are decoded *together*: decoding one sequence on a CPU is memory-bound, so
  the scheduler puts the next token of every running sequence (up to `COMPOSITE_LLM_LOCAL_BATCH`,
  default 4) into one `llama_decode` call, and `n=k` samples of one prompt (or k requests with the
  same prompt, as a composite's fan-out sends them) evaluate that prompt once. See batching.py.
  `COMPOSITE_LLM_LOCAL_BATCH=1` gives the old one-at-a-time behaviour.
- Each decode step already uses every core (`n_threads = os.cpu_count()`), so by default one step
  runs at a time across all models (`COMPOSITE_LLM_LOCAL_PARALLEL`, default 1): two models with
  work alternate step by step.
- Caveat measured here: llama.cpp's threads spin-wait for each other, so when *other processes*
  keep the cores busy, `n_threads = cpu_count` collapses (SmolLM2 on 2 loaded cores: ~1-17 tok/s
  with 2 threads vs ~30 with 1). Set `COMPOSITE_LLM_LOCAL_THREADS=1` on a shared, busy machine.
- `llama_cpp` is imported lazily, on the scheduler thread, so `composite_llm.local` imports without it.
- Every request, streaming or not, streams its events to the consumer (an asyncio queue, or a thread
  queue for sync callers); when the consumer goes away (closed stream, cancelled task, timeout) its
  sequences leave the batch at the next step instead of generating to `max_tokens` for nobody.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from composite_llm.local.batching import BatchScheduler
from composite_llm.local.cache import resolve_model_file
from composite_llm.local.catalog import RUNTIME_BUILD_ENV, RUNTIME_REQUIREMENT, LocalModel, get_model
from composite_llm.local.errors import LocalModelError, LocalRuntimeMissing
from composite_llm.local.events import END as _END
from composite_llm.local.events import Choice, Generation, StreamEvent
from composite_llm.local.params import generation_kwargs, sample_count, to_llama_messages
from composite_llm.usage import UsageTotals

log = logging.getLogger(__name__)

N_CTX_ENV = "COMPOSITE_LLM_LOCAL_N_CTX"
THREADS_ENV = "COMPOSITE_LLM_LOCAL_THREADS"
PARALLEL_ENV = "COMPOSITE_LLM_LOCAL_PARALLEL"
BATCH_ENV = "COMPOSITE_LLM_LOCAL_BATCH"
DEFAULT_N_CTX = 4096
#: Sequences decoded together per model (continuous batching); 1 = one request at a time. Each one
#: holds n_ctx KV cells (4096 x ~28 KB = ~115 MB for the 1.5B), allocated when the model loads.
DEFAULT_BATCH = 4
#: Tokens per llama_decode call (prompt chunks plus one token per running sequence).
N_BATCH = 512


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def runtime_installed() -> bool:
    """True when llama-cpp-python is importable (checked without importing it)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def runtime_pip_command() -> str:
    return f"{RUNTIME_BUILD_ENV} pip install --no-cache-dir {RUNTIME_REQUIREMENT}"


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        command = runtime_pip_command()
        raise LocalRuntimeMissing(
            f"local models need llama-cpp-python, which is not installed ({exc}). "
            f"Install it with: {command} (or: pip install 'composite-llm[local]'); "
            "it builds from source, about 4-6 min on 2 cores, once (pip caches the wheel)",
            command,
        ) from exc
    return llama_cpp


#: Set when the interpreter starts shutting down, before non-daemon threads are joined: the schedulers
#: stop at their next step and queued requests do not start, so Ctrl-C exits promptly (and no
#: llama.cpp call is running when the models are freed).
_shutting_down = threading.Event()
_register_thread_exit = getattr(threading, "_register_atexit", None)  # runs before threads are joined
if _register_thread_exit is not None:
    _register_thread_exit(_shutting_down.set)

#: Every Llama this process loaded; closed explicitly at exit because llama-cpp-python's own
#: `__del__` runs after module teardown and prints "Exception ignored ... NoneType" otherwise.
_live: list[LoadedModel] = []


@atexit.register
def _close_all() -> None:
    _shutting_down.set()
    for model in _live:
        llama, model.llama = model.llama, None
        close = getattr(llama, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # pragma: no cover - best effort at exit
                pass


@dataclass
class LoadedModel:
    """One catalog model, its scheduler and, once loaded, its `Llama` instance."""

    spec: LocalModel
    n_ctx: int
    n_threads: int
    max_seqs: int
    llama: Any = None
    path: Path | None = None
    scheduler: BatchScheduler | None = None

    def __post_init__(self) -> None:
        self.scheduler = BatchScheduler(
            self.spec.name,
            self.ensure_loaded,
            n_ctx=self.n_ctx,
            max_seqs=self.max_seqs,
            n_batch=N_BATCH,
            compute_slot=_compute_slot,
            shutting_down=_shutting_down,
        )

    # --- runs on the scheduler thread ----------------------------------------------------------
    def ensure_loaded(self) -> Any:
        """The `Llama` object: weights, tokenizer and chat template. Its own context is kept tiny;
        generation uses the scheduler's multi-sequence context on the same weights."""
        if self.llama is not None:
            return self.llama
        llama_cpp = _import_llama_cpp()
        path = resolve_model_file(self.spec)
        started = time.perf_counter()
        llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=256,
            n_batch=32,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            chat_format=self.spec.chat_format,
            verbose=False,
        )
        if self.spec.chat_format is None and "tokenizer.chat_template" not in llama.metadata:
            llama.chat_format = "chatml"  # both catalog families speak ChatML
        log.info("loaded %s from %s in %.1fs", self.spec.name, path, time.perf_counter() - started)
        self.llama, self.path = llama, path
        _live.append(self)
        return llama

    # --- any thread ----------------------------------------------------------------------------
    def submit(
        self,
        messages: list[dict[str, Any]],
        optional_params: dict[str, Any],
        emit: Any,
        cancelled: threading.Event,
    ) -> None:
        """Queue one request (n samples) with the model's scheduler; bad parameters raise here."""
        kwargs = generation_kwargs(optional_params, self.spec.stop)
        n = sample_count(optional_params)
        assert self.scheduler is not None
        self.scheduler.submit(to_llama_messages(messages), kwargs, n, emit, cancelled)


def _collect(events: list[StreamEvent], started: float) -> Generation:
    texts: dict[int, list[str]] = {}
    reasons: dict[int, str] = {}
    usage = UsageTotals()
    for event in events:
        texts.setdefault(event.index, []).append(event.text)
        if event.finish_reason is not None:
            reasons[event.index] = event.finish_reason
        if event.usage is not None:
            usage = event.usage
    indices = sorted(texts) or [0]
    choices = [Choice("".join(texts.get(i, [])), reasons.get(i, "stop"), i) for i in indices]
    return Generation(choices=choices, usage=usage, seconds=time.perf_counter() - started)


class LocalTimeout(LocalModelError):
    """The request did not finish within its timeout (queue wait included); generation was stopped."""


_compute_lock = threading.Lock()
_compute_semaphore: threading.BoundedSemaphore | None = None


def _compute_slot() -> threading.BoundedSemaphore:
    """The process-wide limit on simultaneous generations (see module docstring)."""
    global _compute_semaphore
    with _compute_lock:
        if _compute_semaphore is None:
            _compute_semaphore = threading.BoundedSemaphore(_env_int(PARALLEL_ENV, 1))
        return _compute_semaphore


class LocalRuntime:
    """Registry of loaded models; the provider talks only to this."""

    def __init__(
        self,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        max_seqs: int | None = None,
    ) -> None:
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._max_seqs = max_seqs
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def model(self, name: str) -> LoadedModel:
        """The (possibly not yet loaded) model for a catalog name; UnknownLocalModel otherwise."""
        spec = get_model(name)
        with self._lock:
            loaded = self._models.get(spec.name)
            if loaded is None:
                n_ctx = self._n_ctx or _env_int(N_CTX_ENV, DEFAULT_N_CTX)
                loaded = LoadedModel(
                    spec=spec,
                    n_ctx=n_ctx,
                    n_threads=self._n_threads or _env_int(THREADS_ENV, os.cpu_count() or 1),
                    max_seqs=self._max_seqs or _env_int(BATCH_ENV, DEFAULT_BATCH),
                )
                self._models[spec.name] = loaded
            return loaded

    def loaded_models(self) -> list[str]:
        with self._lock:
            return [name for name, m in self._models.items() if m.llama is not None]

    # --- public API: sync ------------------------------------------------------------------
    def load(self, name: str) -> Path:
        """Load a model now (assembling its file if needed); returns the GGUF path."""
        model = self.model(name)
        assert model.scheduler is not None
        model.scheduler.call(model.ensure_loaded)
        assert model.path is not None
        return model.path

    def stream(
        self,
        name: str,
        messages: list[dict[str, Any]],
        optional_params: dict[str, Any],
        timeout: float | None = None,
    ) -> Generator[StreamEvent, None, None]:
        """Blocking iterator of StreamEvents; closing it early stops the generation."""
        model = self.model(name)
        sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
        cancelled = threading.Event()
        model.submit(messages, optional_params, sink.put, cancelled)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = sink.get(timeout=wait)
                except queue.Empty:
                    raise _timed_out(name, timeout) from None
                if _is_end(item):
                    return
                yield item
        finally:
            cancelled.set()  # the scheduler drops the request at its next step (or before it starts)

    def complete(
        self,
        name: str,
        messages: list[dict[str, Any]],
        optional_params: dict[str, Any],
        timeout: float | None = None,
    ) -> Generation:
        started = time.perf_counter()
        return _collect(list(self.stream(name, messages, optional_params, timeout)), started)

    async def astream(
        self,
        name: str,
        messages: list[dict[str, Any]],
        optional_params: dict[str, Any],
        timeout: float | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Async iterator of StreamEvents; the loop never blocks, `aclose()`/cancel stops generation."""
        model = self.model(name)
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(sink.put_nowait, item)
            except RuntimeError:  # loop closed: nobody is listening any more
                cancelled.set()

        model.submit(messages, optional_params, emit, cancelled)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                if deadline is None:
                    item = await sink.get()
                else:
                    try:
                        # asyncio.timeout_at, not wait_for: on Python 3.11 wait_for can swallow a cancellation
                        # that arrives as the item does, and the consumer keeps running after its client left.
                        async with asyncio.timeout_at(deadline):
                            item = await sink.get()
                    except TimeoutError:
                        raise _timed_out(name, timeout) from None
                if _is_end(item):
                    return
                yield item
        finally:
            cancelled.set()  # the scheduler drops the request at its next step (or before it starts)

    async def acomplete(
        self,
        name: str,
        messages: list[dict[str, Any]],
        optional_params: dict[str, Any],
        timeout: float | None = None,
    ) -> Generation:
        started = time.perf_counter()
        events = [event async for event in self.astream(name, messages, optional_params, timeout)]
        return _collect(events, started)


def _is_end(item: Any) -> bool:
    """What the sync and async consumers do with an item from the scheduler: True at the end of the
    stream, an error it sent is raised, anything else is an event to yield."""
    if item is _END:
        return True
    if isinstance(item, BaseException):
        raise item
    return False


def _timed_out(name: str, timeout: float | None) -> LocalTimeout:
    return LocalTimeout(f"local/{name} did not answer within {timeout:g}s")


def raise_for_runtime() -> None:
    """Fail fast (before queueing) when llama-cpp-python is missing."""
    if not runtime_installed():
        _import_llama_cpp()


_default_runtime: LocalRuntime | None = None
_default_lock = threading.Lock()


def default_runtime() -> LocalRuntime:
    """The process-wide runtime shared by every LocalProvider."""
    global _default_runtime
    with _default_lock:
        if _default_runtime is None:
            _default_runtime = LocalRuntime()
        return _default_runtime


__all__ = [
    "Choice",
    "Generation",
    "LocalModelError",
    "LocalRuntime",
    "LocalTimeout",
    "StreamEvent",
    "default_runtime",
    "raise_for_runtime",
    "runtime_installed",
    "runtime_pip_command",
]
