"""Batched multi-sequence decoding: one scheduler thread per model, many samples per llama.cpp step.

Why: decoding one sequence on a CPU is memory-bound (every step reads all the weights to produce one
token), so k sequences decoded in the same `llama_decode` call cost little more than one. A composite
that samples one local model k times (Self-MoA, self-consistency waves, best-of-n, debate) therefore
costs about one generation instead of k.

How:
- One `llama_context` per model whose KV cache holds `max_seqs` sequences of `n_ctx` cells each
  (`kv_unified=false`: one stream per sequence). k samples of one prompt evaluate it once and copy
  its cells to the other k-1 streams (`llama_memory_seq_cp`). Separate streams rather than one
  unified cache because every sequence then sees exactly the cache layout it would see alone: the
  attention sums run in the same order, so a batched sample at temperature 0 is the same text as a
  sequential one (with a unified cache, masked cells of other sequences changed the rounding and
  SmolLM2's greedy answers diverged after a few tokens).
- Requests arrive on a queue from any thread or event loop. Between steps the scheduler admits new
  ones (continuous batching): a prompt identical to one still being evaluated joins it as a follower
  (forked when its evaluation ends); otherwise the longest prefix shared with a sequence already in
  the cache is copied and only the rest is evaluated. Prompt chunks and the one-token decode steps
  of running sequences go into the same batch (at most `n_batch` tokens).
- Each sample has its own sampler chain, built exactly as llama-cpp-python builds it (penalties,
  grammar, greedy at temperature 0, else top-k/typical/top-p/min-p/temperature/dist with its seed),
  and stops on its own (end-of-generation token, stop string, `max_tokens`).
- Memory is bounded up front: `max_seqs × n_ctx` cells (F16, e.g. ~28 KB per cell for the 1.5B).
  A request for more samples than `max_seqs` is refused with a clear error; one that does not fit
  now waits for running sequences to finish. `max_tokens` is capped so prompt + answer fit n_ctx.
- The prompt text and every sampling default come from llama-cpp-python's own chat handler (called
  with a stand-in whose `create_completion` only records its arguments), so prompts, stop strings
  and `response_format` grammars are the ones its sequential path used.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from composite_llm.local.errors import LocalContextOverflow, LocalModelError
from composite_llm.local.events import END, StreamEvent
from composite_llm.local.text import StopText
from composite_llm.usage import UsageTotals

log = logging.getLogger(__name__)

#: How long an idle scheduler waits after a first request for its siblings (a composite's fan-out
#: reaches the provider over a few milliseconds), so that identical prompts are evaluated once.
GATHER_SECONDS = 0.02
#: Tokens of the recent history the penalty samplers look at (llama-cpp-python's `last_n_tokens_size`).
PENALTY_LAST_N = 64


@dataclass
class BatchStats:
    """Counters for tests and benchmarks: how much work was shared."""

    decode_calls: int = 0
    prompt_tokens_evaluated: int = 0
    tokens_sampled: int = 0
    max_seqs_in_step: int = 0
    requests: int = 0
    #: wall seconds inside llama_decode, and in sampling + text handling after it (where the time goes)
    decode_seconds: float = 0.0
    sample_seconds: float = 0.0

    def snapshot(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Prepared:
    """A request turned into tokens and sampling settings (by llama-cpp-python's chat handler)."""

    prompt: list[int]
    n: int
    max_tokens: int
    stops: list[str]
    sampling: dict[str, Any]
    grammar: Any
    seed: int | None


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


class _CaptureLlama:
    """Stands in for `Llama` inside its chat handler: everything is delegated except generation,
    whose arguments (prompt tokens, stop strings, grammar, sampling defaults) are captured."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llama, name)

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Captured(kwargs)


@dataclass
class _Request:
    messages: list[dict[str, Any]]
    kwargs: dict[str, Any]
    n: int
    emit: Callable[[Any], None]
    cancelled: threading.Event
    prepared: Prepared | None = None
    seqs: list[_Seq] = field(default_factory=list)
    remaining: int = 0
    completion_tokens: int = 0
    done: bool = False


@dataclass
class _Seq:
    seq_id: int
    request: _Request
    index: int
    sampler: Any
    text: StopText
    max_tokens: int
    kv_tokens: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    followers: list[_Seq] = field(default_factory=list)
    generated: int = 0
    finished: bool = False


class SchedulerClosed(LocalModelError):
    """The process is shutting down; the request was not run."""


class BatchScheduler:
    """Owns one model's llama.cpp context and the thread that runs every request to it."""

    def __init__(
        self,
        name: str,
        load: Callable[[], Any],
        *,
        n_ctx: int,
        max_seqs: int,
        n_batch: int,
        compute_slot: Callable[[], Any],
        shutting_down: threading.Event,
        on_event: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.name = name
        self._load = load
        self.n_ctx = n_ctx

        self.max_seqs = max(1, max_seqs)
        self.n_batch = max(16, n_batch)
        self._compute_slot = compute_slot
        self._shutting_down = shutting_down
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self.stats = BatchStats()
        # owned by the scheduler thread:
        self.llama: Any = None
        self._llama_cpp: Any = None
        self._ctx: Any = None
        self._mem: Any = None
        self._batch: Any = None
        self._waiting: list[_Request] = []
        self._active: dict[int, _Request] = {}
        self._live: list[_Seq] = []
        self._free_ids: list[int] = list(range(self.max_seqs))

    # --- any thread -------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=f"local-{self.name}", daemon=False)
                self._thread.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the scheduler thread (between steps) and return its result."""
        done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._ensure_thread()
        self._inbox.put(("call", fn, done))
        ok, value = done.get()
        if not ok:
            raise value
        return value

    def submit(
        self,
        messages: list[dict[str, Any]],
        kwargs: dict[str, Any],
        n: int,
        emit: Callable[[Any], None],
        cancelled: threading.Event,
    ) -> None:
        """Queue a request; `emit` receives StreamEvents (via `on_event`), then the end marker or an error."""
        self._ensure_thread()
        self._inbox.put(("request", _Request(messages, kwargs, n, emit, cancelled), None))

    # --- the scheduler thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._shutting_down.is_set():
                idle = not self._live and not self._waiting
                if not self._drain(block=idle):
                    continue
                self._drop_cancelled()
                self._admit()
                if self._live:
                    self._step()
        finally:
            for request in [*self._waiting, *self._active.values()]:
                request.emit(SchedulerClosed(f"local/{self.name}: the process is shutting down"))
            self._waiting.clear()
            self._active.clear()
            self._live.clear()

    def _drain(self, block: bool) -> bool:
        """Take everything queued; when idle, wait for a first item and then briefly for its siblings."""
        got = False
        if block:
            try:
                item = self._inbox.get(timeout=0.25)
            except queue.Empty:
                return False
            self._handle(item)
            got = True
            if item[0] == "request":
                time.sleep(GATHER_SECONDS)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return got or bool(self._live) or bool(self._waiting)
            self._handle(item)
            got = True

    def _handle(self, item: tuple[str, Any, Any]) -> None:
        kind, payload, done = item
        if kind == "call":
            try:
                done.put((True, payload()))
            except BaseException as exc:  # handed back to the caller
                done.put((False, exc))
            return
        request: _Request = payload
        if request.cancelled.is_set():
            request.emit(END)
            return
        try:
            request.prepared = self._prepare(request)
        except LocalModelError as exc:
            request.emit(exc)
            return
        except ValueError as exc:
            request.emit(LocalModelError(f"local/{self.name}: {exc}"))
            return
        except BaseException as exc:
            request.emit(exc)
            return
        self.stats.requests += 1
        self._waiting.append(request)

    def _ensure_context(self) -> None:
        if self._ctx is not None:
            return
        llama = self._load()
        import llama_cpp
        from llama_cpp import _internals

        params = type(llama.context_params).from_buffer_copy(llama.context_params)
        params.n_ctx = self.n_ctx * self.max_seqs  # one stream of n_ctx cells per sequence
        params.n_batch = self.n_batch
        params.n_ubatch = self.n_batch
        params.n_seq_max = self.max_seqs
        params.kv_unified = False
        self._ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self._mem = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._llama_cpp = llama_cpp
        self.llama = llama

    def _prepare(self, request: _Request) -> Prepared:
        self._ensure_context()
        from llama_cpp import Llama

        kwargs = dict(request.kwargs)
        kwargs.pop("stream", None)
        try:
            Llama.create_chat_completion(_CaptureLlama(self.llama), messages=request.messages, **kwargs)
        except _Captured as captured:
            got = captured.kwargs
        else:  # pragma: no cover - every handler ends in create_completion
            raise LocalModelError(f"local/{self.name}: the chat handler did not generate")
        prompt = list(got["prompt"])
        if len(prompt) >= self.n_ctx:
            raise LocalContextOverflow(
                f"local/{self.name}: Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}; "
                f"shorten the prompt or raise COMPOSITE_LLM_LOCAL_N_CTX (now {self.n_ctx})"
            )
        max_tokens = got.get("max_tokens") or 0
        if max_tokens <= 0 or max_tokens + len(prompt) > self.n_ctx:
            max_tokens = self.n_ctx - len(prompt)
        n = request.n
        if n > self.max_seqs:
            raise LocalContextOverflow(
                f"local/{self.name}: n={n} samples do not fit: the KV cache holds {self.max_seqs} sequences of "
                f"{self.n_ctx} tokens (COMPOSITE_LLM_LOCAL_BATCH, COMPOSITE_LLM_LOCAL_N_CTX); ask for fewer "
                "samples or raise COMPOSITE_LLM_LOCAL_BATCH"
            )
        stop = got.get("stop") or []
        stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s]
        sampling = {
            key: got[key]
            for key in ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty",
                        "frequency_penalty", "presence_penalty", "mirostat_mode", "mirostat_tau", "mirostat_eta")
            if key in got
        }
        return Prepared(prompt, n, max_tokens, stops, sampling, got.get("grammar"), got.get("seed"))

    def _sampler(self, prepared: Prepared, index: int) -> Any:
        """One sample's chain, in llama-cpp-python's `Llama._init_sampler` order and defaults."""
        from llama_cpp import _internals

        s = prepared.sampling
        llama = self.llama
        if prepared.seed is None:
            seed = random.getrandbits(32) % 0xFFFFFFFF
        else:
            seed = (int(prepared.seed) + index) % 0xFFFFFFFF  # sample i of a seeded request: seed + i
        sampler = _internals.LlamaSampler()
        sampler.add_penalties(
            n_vocab=llama.n_vocab(),
            penalty_last_n=PENALTY_LAST_N,
            penalty_repeat=s.get("repeat_penalty", 1.0),
            penalty_freq=s.get("frequency_penalty", 0.0),
            penalty_present=s.get("presence_penalty", 0.0),
        )
        if prepared.grammar is not None:
            sampler.add_grammar(llama._model, prepared.grammar)
        temp = s.get("temperature", 0.2)
        if temp < 0.0:
            sampler.add_dist(seed)
        elif temp == 0.0:
            sampler.add_greedy()
        elif s.get("mirostat_mode", 0) == 1:
            sampler.add_mirostat(llama.n_vocab(), seed, s.get("mirostat_tau", 5.0), s.get("mirostat_eta", 0.1), 100)
        elif s.get("mirostat_mode", 0) == 2:
            sampler.add_mirostat_v2(seed, s.get("mirostat_tau", 5.0), s.get("mirostat_eta", 0.1))
        else:
            sampler.add_top_k(s.get("top_k", 40))
            sampler.add_typical(s.get("typical_p", 1.0), 1)
            sampler.add_top_p(s.get("top_p", 0.95), 1)
            sampler.add_min_p(s.get("min_p", 0.05), 1)
            sampler.add_temp(temp)
            sampler.add_dist(seed)
        return sampler

    # --- admission --------------------------------------------------------------------------
    def _admit(self) -> None:
        """Start waiting requests, in arrival order, while sequence slots and cache cells last."""
        while self._waiting:
            request = self._waiting[0]
            prepared = request.prepared
            assert prepared is not None
            if len(self._free_ids) < prepared.n:
                return
            self._waiting.pop(0)
            self._active[id(request)] = request
            request.remaining = prepared.n
            request.seqs = [
                _Seq(
                    seq_id=self._free_ids.pop(0),
                    request=request,
                    index=i,
                    sampler=self._sampler(prepared, i),
                    text=StopText(prepared.stops),
                    max_tokens=prepared.max_tokens,
                )
                for i in range(prepared.n)
            ]
            self._place(request.seqs)

    def _place(self, seqs: list[_Seq]) -> None:
        """Put a request's sequences in the batch, sharing whatever prompt work can be shared."""
        prompt = seqs[0].request.prepared.prompt  # type: ignore[union-attr]
        for live in self._live:  # an identical prompt still being evaluated: follow it
            if live.pending and len(live.pending) > 1 and live.generated == 0 and not live.finished \
                    and live.request.prepared.prompt == prompt:  # type: ignore[union-attr]
                live.followers.extend(seqs)
                return
        leader, followers = seqs[0], seqs[1:]
        best, best_len = None, 0
        for live in self._live:
            if live.finished:
                continue
            shared = _common_prefix(live.kv_tokens, prompt)
            if shared > best_len:
                best, best_len = live, shared
        reuse = min(best_len, len(prompt) - 1)  # at least one token is evaluated, for its logits
        if best is not None and reuse > 0:
            # Each sequence has its own stream (kv_unified=false) and llama.cpp copies between streams only
            # whole (a range copy is a GGML_ASSERT that aborts the process): copy all, then drop the tail.
            self._llama_cpp.llama_memory_seq_cp(self._mem, best.seq_id, leader.seq_id, -1, -1)
            self._llama_cpp.llama_memory_seq_rm(self._mem, leader.seq_id, reuse, -1)
            leader.kv_tokens = prompt[:reuse]
        leader.pending = prompt[reuse:]
        leader.followers = followers
        self._live.append(leader)

    # --- one step ---------------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for request in [r for r in self._waiting if r.cancelled.is_set()]:
            self._waiting.remove(request)
            request.emit(END)
        for request in [r for r in self._active.values() if r.cancelled.is_set()]:
            self._close_request(request, emit_end=True)

    def _step(self) -> None:
        llama_cpp = self._llama_cpp
        batch = self._batch.batch
        entries: list[tuple[_Seq, int]] = []  # (sequence, batch index of its logits)
        n = 0
        decoding = [s for s in self._live if len(s.pending) == 1]
        prefilling = [s for s in self._live if len(s.pending) > 1]
        for seq in decoding + prefilling:
            room = self.n_batch - n
            if room <= 0:
                break
            chunk = seq.pending[:room]
            for offset, token in enumerate(chunk):
                batch.token[n] = token
                batch.pos[n] = len(seq.kv_tokens) + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq.seq_id
                batch.logits[n] = False
                n += 1
            complete = len(chunk) == len(seq.pending)
            if complete:
                batch.logits[n - 1] = True
                entries.append((seq, n - 1))
            if len(chunk) > 1 or seq.generated == 0:
                self.stats.prompt_tokens_evaluated += len(chunk)
            seq.kv_tokens.extend(chunk)
            seq.pending = seq.pending[len(chunk):]
        if n == 0:
            return
        batch.n_tokens = n
        with self._compute_slot():
            decode_started = time.perf_counter()
            code = llama_cpp.llama_decode(self._ctx.ctx, batch)
            sample_started = time.perf_counter()
        self.stats.decode_seconds += sample_started - decode_started
        self.stats.decode_calls += 1
        if code != 0:
            failed = {id(s.request): s.request for s, _ in entries}
            for request in failed.values():
                request.emit(LocalModelError(f"local/{self.name}: llama_decode failed with code {code}"))
                self._close_request(request, emit_end=False)
            return
        sampled = 0
        for seq, index in entries:
            if seq.followers:
                for follower in seq.followers:
                    llama_cpp.llama_memory_seq_cp(self._mem, seq.seq_id, follower.seq_id, -1, -1)
                    follower.kv_tokens = list(seq.kv_tokens)
                    self._live.append(follower)
                    self._sample(follower, index)
                    sampled += 1
                seq.followers = []
            self._sample(seq, index)
            sampled += 1
        self.stats.max_seqs_in_step = max(self.stats.max_seqs_in_step, sampled)
        self.stats.sample_seconds += time.perf_counter() - sample_started
        self._live = [s for s in self._live if not s.finished]

    def _sample(self, seq: _Seq, index: int) -> None:
        if seq.request.done:
            return
        llama_cpp = self._llama_cpp
        token = seq.sampler.sample(self._ctx, index)
        self.stats.tokens_sampled += 1
        request = seq.request
        if llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token):
            self._finish(seq, "stop")
            return
        seq.generated += 1
        request.completion_tokens += 1
        text = seq.text.feed(self.llama._model.detokenize([token], special=False))
        if text:
            request.emit(StreamEvent(text, index=seq.index))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.generated >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.pending = [token]

    def _finish(self, seq: _Seq, reason: str) -> None:
        request = seq.request
        tail = seq.text.finish()
        if tail:
            request.emit(StreamEvent(tail, index=seq.index))
        self._release(seq)
        request.remaining -= 1
        if request.remaining == 0:
            usage = UsageTotals(prompt_tokens=len(request.prepared.prompt),  # type: ignore[union-attr]
                                completion_tokens=request.completion_tokens)
            request.emit(StreamEvent("", reason, usage, seq.index))
            request.emit(END)
            self._end_request(request)
        else:
            request.emit(StreamEvent("", reason, None, seq.index))

    def _release(self, seq: _Seq) -> None:
        if seq.finished:
            return
        seq.finished = True
        self._llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
        seq.sampler.close()
        self._free_ids.append(seq.seq_id)

    def _end_request(self, request: _Request) -> None:
        request.done = True
        self._active.pop(id(request), None)

    def _close_request(self, request: _Request, emit_end: bool) -> None:
        """Stop every sample of a request (cancelled or failed); other requests keep what they share."""
        for seq in request.seqs:
            foreign = [f for f in seq.followers if f.request is not request]
            if foreign and not seq.finished:  # another request waits on this prompt: it takes over
                heir = foreign[0]
                self._llama_cpp.llama_memory_seq_cp(self._mem, seq.seq_id, heir.seq_id, -1, -1)
                heir.kv_tokens, heir.pending, heir.followers = list(seq.kv_tokens), list(seq.pending), foreign[1:]
                self._live.append(heir)
            seq.followers = []
            self._release(seq)
        for live in self._live:
            live.followers = [f for f in live.followers if f.request is not request]
        self._live = [s for s in self._live if s.request is not request]
        if not request.done:
            self._end_request(request)
            if emit_end:
                request.emit(END)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


__all__ = ["BatchScheduler", "BatchStats", "Prepared", "SchedulerClosed"]
