"""What a local generation hands back: text events, the final usage, the end marker.

A module of its own so the scheduler (`batching.py`) and the runtime's consumers share the types
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from composite_llm.usage import UsageTotals


@dataclass
class StreamEvent:
    """One piece of a streamed answer.

    `index` is the sample (choice) it belongs to. A sample's end is an event with `finish_reason`;
    the request's last such event also carries `usage` (the prompt once, the completion tokens of
    every sample), so a one-sample stream ends exactly as before: text..., then finish + usage.
    """

    text: str
    finish_reason: str | None = None
    usage: UsageTotals | None = None
    index: int = 0


@dataclass
class Choice:
    text: str
    finish_reason: str
    index: int = 0


@dataclass
class Generation:
    """A finished non-streaming answer: one choice per sample."""

    choices: list[Choice]
    usage: UsageTotals
    seconds: float

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason


#: Sent after the last event of a request (or after its error).
END = object()
