"""Exceptions of the CLI-agent runner, in one hierarchy.

Every exception carries the redacted facts a caller needs to report it (exit code, stderr
tail, argv) and a suggested HTTP ``status_code`` so a provider adapter can map it onto its
own error types without string matching. Messages never contain secret values: they are
built from text that has already gone through :mod:`composite_llm.redact`.
"""

from __future__ import annotations

__all__ = [
    "CLIAgentError",
    "CLISpecError",
    "CLINotFoundError",
    "CLITimeoutError",
    "CLIExitError",
    "CLIOutputError",
]


class CLIAgentError(Exception):
    """Base class of every error raised by :mod:`composite_llm.cli_agents`."""

    #: Suggested HTTP status for an adapter that maps errors to HTTP-like exceptions.
    status_code: int = 500

    def __init__(
        self,
        message: str,
        *,
        spec_name: str | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
        argv: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.spec_name = spec_name
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail
        self.argv = list(argv or [])

    def __str__(self) -> str:
        return self.message


class CLISpecError(CLIAgentError, ValueError):
    """A spec, a model name or a setting is unusable (unknown spec, bad placeholder...)."""

    status_code = 400


class CLINotFoundError(CLIAgentError):
    """None of the spec's candidate executables is on PATH (or the override does not exist)."""

    status_code = 503

    def __init__(self, message: str, *, candidates: list[str] | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.candidates = list(candidates or [])


class CLITimeoutError(CLIAgentError):
    """The total or the idle timeout expired; the whole process group was killed."""

    status_code = 408

    def __init__(self, message: str, *, kind: str = "total", timeout_s: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        #: ``"total"`` or ``"idle"``.
        self.kind = kind
        self.timeout_s = timeout_s


class CLIExitError(CLIAgentError):
    """The CLI exited non-zero, or reported ``is_error`` / a failed turn in its output."""

    status_code = 502

    def __init__(
        self, message: str, *, is_error_result: bool = False, upstream_status: int | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        #: True when the CLI itself reported the failure in its JSON output.
        self.is_error_result = is_error_result
        #: The HTTP status the CLI's model API answered with (e.g. 400), when the CLI reports it:
        #: an adapter answers with that status rather than a generic 502.
        self.upstream_status = upstream_status


class CLIOutputError(CLIAgentError):
    """The CLI exited 0 but its output could not be understood (no answer found)."""

    status_code = 502
