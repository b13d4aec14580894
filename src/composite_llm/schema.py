"""Pydantic building blocks shared by every topology: nodes, provider bundles, fan-out settings.

Strategy modules define their own topology model from these pieces; `profiles/` validates a profile's
`topology` against the model of its strategy. Every model forbids unknown keys, so a typo in YAML is an
error that names the field instead of a setting silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_REF_PREFIX = "os.environ/"
# Leaf sub-calls one request may make unless its topology says otherwise: room for the large topologies
# that make sense (a council of 16 reviewing, 64 self-consistency samples), not for a runaway fan-out.
DEFAULT_MAX_SUB_CALLS = 100


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ProviderBundle(StrictModel):
    """Shared connection settings (api_base, api_key, ...) that nodes refer to by name."""

    litellm_params: dict[str, Any] = Field(default_factory=dict)


class NodeConfig(StrictModel):
    """One model call in a topology.

    `model` is any LiteLLM model string, including another `composite/...` model. `provider` names a
    bundle of shared litellm params; `params` are this node's own (they win over the bundle's).
    A plain string is accepted as shorthand for `{model: <string>}`.
    """

    model: str = Field(min_length=1)
    provider: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    name: str | None = Field(default=None, description="label shown in traces instead of the model")
    timeout_s: float | None = Field(default=None, gt=0)
    fallbacks: list["NodeConfig"] = Field(default_factory=list)
    instruction: str | None = Field(
        default=None, min_length=1,
        description="text appended to the last user message of this node's calls (e.g. a reasoning instruction)")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"model": value}
        return value

    @field_validator("model")
    @classmethod
    def _no_blank_model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be blank")
        return value.strip()

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def is_composite(self) -> bool:
        return self.model.startswith("composite/")


class FanOutSettings(StrictModel):
    """How a parallel stage treats slow and failing members.

    quorum: fewest successful answers the stage needs; fewer is an error.
    grace_s: once `quorum` answers are in, wait at most this long for the rest, then cancel them.
        None waits for every member (each still bounded by its timeout).
    deadline_s: hard cap on the stage; stragglers are cancelled at the deadline.
    member_timeout_s: per-call timeout for members that set none (also bounded by the request timeout).
    retries: extra attempts per sub-call on transient errors (429, 5xx, connection).
    member_tools: pass the client's tools to members too (by default only the final stage sees them).
    final_reserve_s: with a request timeout, the time kept for the final stage: a fan-out stops waiting for
        stragglers once `quorum` answered and only this much is left (None: twice the final model's observed
        latency within a fifth to a half of the timeout, else a third; never more than the final node's
        `timeout_s`).
    max_sub_calls: the most leaf sub-calls (upstream model calls, nested composites' included, retries not)
        one request may make; a topology that needs more is refused before any call (read from the
        top-level request's topology).
    """

    quorum: int = Field(default=1, ge=1)
    grace_s: float | None = Field(default=None, ge=0)
    deadline_s: float | None = Field(default=None, gt=0)
    member_timeout_s: float | None = Field(default=None, gt=0)
    retries: int = Field(default=1, ge=0, le=5)
    member_tools: bool = False
    final_reserve_s: float | None = Field(default=None, ge=0)
    max_sub_calls: int = Field(default=DEFAULT_MAX_SUB_CALLS, ge=1)


class SampledNodes(StrictModel):
    """Short form for one model sampled several times (Self-MoA, self-consistency):
    `{model: ..., samples: k, temperature: t}` expands to k identical nodes; `temperatures: [...]`
    gives each sample its own temperature instead."""

    model: str = Field(min_length=1)
    samples: int = Field(ge=1, le=64)
    temperature: float | None = Field(default=None, ge=0)
    temperatures: list[float] | None = None
    provider: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    instruction: str | None = Field(default=None, min_length=1)

    @classmethod
    def of(cls, node: NodeConfig, *, samples: int, temperature: float | None = None,
           temperatures: list[float] | None = None) -> "SampledNodes":
        """The short form for `node` sampled `samples` times (its provider, params, name, timeout and
        instruction kept); the strategies with a `model` + `samples` topology expand through this."""
        return cls(model=node.model, samples=samples, temperature=temperature, temperatures=temperatures,
                   provider=node.provider, params=node.params, name=node.name, timeout_s=node.timeout_s,
                   instruction=node.instruction)

    def nodes(self) -> list[NodeConfig]:
        return [NodeConfig.model_validate(node) for node in self.expand()]

    def expand(self) -> list[dict[str, Any]]:
        if self.temperatures is not None and len(self.temperatures) != self.samples:
            raise ValueError(f"temperatures has {len(self.temperatures)} values for {self.samples} samples")
        nodes = []
        for index in range(self.samples):
            params = dict(self.params)
            temperature = self.temperatures[index] if self.temperatures is not None else self.temperature
            if temperature is not None:
                params["temperature"] = temperature
            label = f"{self.name or self.model} #{index + 1}"
            nodes.append({"model": self.model, "provider": self.provider, "params": params, "name": label,
                          "timeout_s": self.timeout_s, "instruction": self.instruction})
        return nodes


def expand_samples(value: Any) -> Any:
    """A node list as given, or the expansion of the sampled short form (validated first)."""
    if isinstance(value, dict) and "samples" in value:
        return SampledNodes.model_validate(value).expand()
    return value


# A topology's list of member nodes, which may also be given in the sampled short form (expanded first).
SampledNodeList = Annotated[list[NodeConfig], BeforeValidator(expand_samples)]


def check_quorum(settings: FanOutSettings, members: int, field: str) -> None:
    """Reject a quorum that can never be met (raised inside a validator, so the path is reported)."""
    if settings.quorum > members:
        raise ValueError(f"settings.quorum={settings.quorum} exceeds the {members} members of {field}")


def _location(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


def validation_problems(exc: ValidationError, prefix: str) -> list[str]:
    """One line per problem of a pydantic error, `prefix.field.path[0]: message`: profile documents and
    inline topologies word their errors the same way (pydantic's own text names no file or profile)."""
    problems = []
    for error in exc.errors():
        loc = _location([p for p in error["loc"] if p not in ("function-after", "function-before")])
        path = f"{prefix}.{loc}" if loc != "(root)" else prefix
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (not allowed here)"
        problems.append(f"{path}: {message}")
    return problems
