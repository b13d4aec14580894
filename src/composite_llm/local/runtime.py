"""In-process llama.cpp: one `Llama` per model per process, one worker thread per model.

Why this shape:
- A `Llama` object is not thread-safe (one KV cache, one sampler) and loading costs time and memory,
  so each model gets exactly one instance and one single-thread executor. Every use of that
  instance (load, generate) is a job on that executor: requests to one model are serialized in FIFO
  order whether they come from sync callers or from any event loop, and an event loop never blocks
  on llama.cpp (it awaits an asyncio queue fed with `call_soon_threadsafe`). Waiting requests hold
  no thread; a request cancelled while queued never runs.
- Each generation already uses every core (`n_threads = os.cpu_count()`), so by default only one
  generation runs at a time across all models (`COMPOSITE_LLM_LOCAL_PARALLEL`, default 1): two at
  once on the same cores were no faster in total here (each answer slower), so they queue.
- Caveat measured here: llama.cpp's threads spin-wait for each other, so when *other processes*
  keep the cores busy, `n_threads = cpu_count` collapses (SmolLM2 on 2 loaded cores: ~1-17 tok/s
  with 2 threads vs ~30 with 1). Set `COMPOSITE_LLM_LOCAL_THREADS=1` on a shared, busy machine.
- `llama_cpp` is imported lazily, inside the worker, so `composite_llm.local` imports without it.
- Every request, streaming or not, is one job that streams from llama.cpp and hands chunks to the
  consumer (an asyncio queue, or a thread queue for sync callers); when the consumer goes away
  (closed stream, cancelled task, timeout) the job stops at the next token instead of generating
  to `max_tokens` for nobody. Token counts come from a thin `Llama.generate` wrapper, because
  llama-cpp-python reports no usage when streaming; they match its non-streaming usage.
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
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from composite_llm.local.cache import resolve_model_file
from composite_llm.local.catalog import RUNTIME_BUILD_ENV, RUNTIME_REQUIREMENT, LocalModel, get_model
from composite_llm.local.errors import LocalContextOverflow, LocalModelError, LocalRuntimeMissing
from composite_llm.local.params import generation_kwargs, to_llama_messages

log = logging.getLogger(__name__)

N_CTX_ENV = "COMPOSITE_LLM_LOCAL_N_CTX"
THREADS_ENV = "COMPOSITE_LLM_LOCAL_THREADS"
PARALLEL_ENV = "COMPOSITE_LLM_LOCAL_PARALLEL"
DEFAULT_N_CTX = 4096


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


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Generation:
    """A finished non-streaming answer."""

    text: str
    finish_reason: str
    usage: Usage
    seconds: float


@dataclass
class StreamEvent:
    """One piece of a streamed answer; the last one has `finish_reason` and `usage` set."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass
class _Counter:
    """Token counts of the generation in progress (llama.cpp reports none when streaming)."""

    prompt_tokens: int = 0
    sampled: int = 0
    last_was_eog: bool = False


class _StreamCancelled(Exception):
    pass


#: Set when the interpreter starts shutting down, before executor threads are joined: a running
#: generation stops at its next token and queued ones do not start, so Ctrl-C exits promptly.
_shutting_down = threading.Event()
_register_thread_exit = getattr(threading, "_register_atexit", None)  # runs before executors are joined
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


_END = object()


@dataclass
class LoadedModel:
    """One catalog model and, once loaded, its `Llama` instance; owned by its worker thread."""

    spec: LocalModel
    n_ctx: int
    n_threads: int
    executor: ThreadPoolExecutor
    llama: Any = None
    path: Path | None = None
    counter: _Counter = field(default_factory=_Counter)

    # --- everything below runs on the model's worker thread -------------------------------
    def ensure_loaded(self) -> Any:
        if self.llama is not None:
            return self.llama
        llama_cpp = _import_llama_cpp()
        path = resolve_model_file(self.spec)
        counter = self.counter

        class _CountingLlama(llama_cpp.Llama):  # type: ignore[misc, name-defined]
            """Records prompt/sampled token counts, which the streaming API does not report."""

            def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
                counter.prompt_tokens = len(tokens)
                counter.sampled = 0
                counter.last_was_eog = False
                inner = super().generate(tokens, *args, **kwargs)
                try:
                    for token in inner:
                        counter.sampled += 1
                        counter.last_was_eog = bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))
                        yield token
                finally:
                    inner.close()

        started = time.perf_counter()
        llama = _CountingLlama(
            model_path=str(path),
            n_ctx=self.n_ctx,
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

    def _call(self, messages: list[dict[str, Any]], optional_params: dict[str, Any], stream: bool) -> Any:
        llama = self.ensure_loaded()
        kwargs = generation_kwargs(optional_params, self.spec.stop)
        return llama.create_chat_completion(messages=to_llama_messages(messages), stream=stream, **kwargs)

    def _overflow(self, exc: ValueError) -> LocalModelError | ValueError:
        """llama-cpp-python signals a too-long prompt with a ValueError (raised at the first chunk)."""
        if "exceed context window" in str(exc):
            return LocalContextOverflow(
                f"local/{self.spec.name}: {exc}; shorten the prompt or raise {N_CTX_ENV} (now {self.n_ctx})"
            )
        return exc

    def run(
        self,
        messages: list[dict[str, Any]],
        optional_params: dict[str, Any],
        emit: Callable[[Any], None],
        cancelled: threading.Event,
    ) -> None:
        """The one job every request becomes: stream the answer into `emit`.

        Emits StreamEvents, a final StreamEvent with finish_reason and usage, then `_END`; on error,
        the exception instead. Non-streaming requests collect the same events, so a cancelled or
        timed-out request of either kind stops generating at the next token.
        """
        started = time.perf_counter()
        try:
            if cancelled.is_set() or _shutting_down.is_set():
                raise _StreamCancelled
            with _compute_slot():
                generating = time.perf_counter()
                chunks = self._call(messages, optional_params, stream=True)
                finish_reason = "stop"
                try:
                    for chunk in chunks:
                        if cancelled.is_set() or _shutting_down.is_set():
                            raise _StreamCancelled
                        choice = chunk["choices"][0]
                        text = choice.get("delta", {}).get("content") or ""
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
                        if text:
                            emit(StreamEvent(text))
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            counter = self.counter
            completion = max(0, counter.sampled - (1 if counter.last_was_eog else 0))
            log.debug(
                "local/%s: %d prompt + %d completion tokens in %.2fs (waited %.2fs for a compute slot)",
                self.spec.name, counter.prompt_tokens, completion,
                time.perf_counter() - generating, generating - started,
            )
            emit(StreamEvent("", finish_reason, Usage(counter.prompt_tokens, completion)))
            emit(_END)
        except _StreamCancelled:
            emit(_END)
        except ValueError as exc:
            emit(self._overflow(exc))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            emit(exc)


def _collect(events: list[StreamEvent], started: float) -> Generation:
    final = events[-1] if events and events[-1].usage is not None else StreamEvent("", "stop", Usage())
    return Generation(
        text="".join(e.text for e in events),
        finish_reason=final.finish_reason or "stop",
        usage=final.usage or Usage(),
        seconds=time.perf_counter() - started,
    )


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

    def __init__(self, n_ctx: int | None = None, n_threads: int | None = None) -> None:
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def model(self, name: str) -> LoadedModel:
        """The (possibly not yet loaded) model for a catalog name; UnknownLocalModel otherwise."""
        spec = get_model(name)
        with self._lock:
            loaded = self._models.get(spec.name)
            if loaded is None:
                loaded = LoadedModel(
                    spec=spec,
                    n_ctx=self._n_ctx or _env_int(N_CTX_ENV, DEFAULT_N_CTX),
                    n_threads=self._n_threads or _env_int(THREADS_ENV, os.cpu_count() or 1),
                    executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"local-{spec.name}"),
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
        model.executor.submit(model.ensure_loaded).result()
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
        job = model.executor.submit(model.run, messages, optional_params, sink.put, cancelled)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = sink.get(timeout=wait)
                except queue.Empty:
                    raise LocalTimeout(f"local/{name} did not answer within {timeout:g}s") from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            job.cancel()  # only has an effect while still queued

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

        job = model.executor.submit(model.run, messages, optional_params, emit, cancelled)
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                if deadline is None:
                    item = await sink.get()
                else:
                    try:
                        item = await asyncio.wait_for(sink.get(), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        raise LocalTimeout(f"local/{name} did not answer within {timeout:g}s") from None
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()
            job.cancel()  # only has an effect while still queued

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
    "Generation",
    "LocalModelError",
    "LocalRuntime",
    "LocalTimeout",
    "StreamEvent",
    "Usage",
    "default_runtime",
    "raise_for_runtime",
    "runtime_installed",
    "runtime_pip_command",
]
