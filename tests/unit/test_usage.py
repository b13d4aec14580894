"""composite_llm.usage.UsageTotals: the one usage type (sub-calls, request sums, local models, CLI agents)."""

from __future__ import annotations

import dataclasses
import typing

from litellm.types.utils import PromptTokensDetailsWrapper, Usage

from composite_llm.cli_agents.output import ParsedOutput
from composite_llm.cli_agents.runner import CLIResult
from composite_llm.local.events import Generation, StreamEvent
from composite_llm.usage import UsageTotals


def test_add_sums_every_count_and_total_is_prompt_plus_completion():
    total = UsageTotals()
    total.add(UsageTotals(10, 5, reasoning_tokens=2, cached_tokens=3, cache_write_tokens=1))
    total.add(UsageTotals(7, 1, reasoning_tokens=0, cached_tokens=4, cache_write_tokens=2))
    assert total == UsageTotals(17, 6, reasoning_tokens=2, cached_tokens=7, cache_write_tokens=3)
    assert total.total_tokens == 23


def test_from_usage_reads_litellm_objects_and_dicts_missing_fields_zero():
    usage = Usage(prompt_tokens=12, completion_tokens=4, total_tokens=16,
                  prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=5, cache_creation_tokens=3))
    assert UsageTotals.from_usage(usage) == UsageTotals(12, 4, cached_tokens=5, cache_write_tokens=3)
    assert UsageTotals.from_usage({"prompt_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 1}}) \
        == UsageTotals(2, 0, reasoning_tokens=1)
    assert UsageTotals.from_usage(None) == UsageTotals()


def test_litellm_shapes_are_made_in_one_place():
    totals = UsageTotals(12, 4, reasoning_tokens=2, cached_tokens=5)
    assert totals.openai_counts() == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    converted = totals.to_litellm()
    assert (converted.prompt_tokens, converted.completion_tokens, converted.total_tokens) == (12, 4, 16)
    assert converted.completion_tokens_details.reasoning_tokens == 2
    assert converted.prompt_tokens_details.cached_tokens == 5
    assert UsageTotals.from_usage(converted) == totals
    assert totals.to_dict() == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                                "reasoning_tokens": 2, "cached_tokens": 5, "cache_write_tokens": 0}


def test_local_models_and_cli_agents_report_the_same_type():
    """No private usage types left: local generations, stream events and CLI results carry UsageTotals."""
    for cls in (Generation, StreamEvent, ParsedOutput):
        hints = typing.get_type_hints(cls)
        assert UsageTotals in (hints["usage"], *typing.get_args(hints["usage"])), cls
    assert CLIResult.model_fields["usage"].annotation is UsageTotals
    assert isinstance(CLIResult(text="x").usage, UsageTotals)
    assert dataclasses.is_dataclass(UsageTotals)


def _parse_usage(usage_paths: dict, event: dict) -> tuple[UsageTotals, bool]:
    from composite_llm.cli_agents.output import OutputParser
    from composite_llm.cli_agents.spec import CLISpec

    spec = CLISpec.model_validate({"name": "u", "command": ["u"], "output_format": "json", "usage": usage_paths})
    return OutputParser(spec)._usage(event)


def test_cli_usage_is_read_into_usage_totals():
    paths = {"prompt_tokens": ["u.in", "u.cache_read", "u.cache_write"], "completion_tokens": "u.out",
             "cached_tokens": "u.cache_read", "cache_write_tokens": "u.cache_write", "total_tokens": "u.total"}
    usage, reported = _parse_usage(paths, {"u": {"in": 10, "cache_read": 5, "cache_write": 2, "out": 7,
                                                 "total": 24}})
    assert reported and usage == UsageTotals(17, 7, cached_tokens=5, cache_write_tokens=2)
    # a CLI that reports a total but no output count: the total fills in the completion count
    usage, _ = _parse_usage({"prompt_tokens": "s.in", "total_tokens": "s.total"}, {"s": {"in": 30, "total": 42}})
    assert usage == UsageTotals(30, 12)
    assert _parse_usage(paths, None) == (UsageTotals(), False)
