"""composite_llm.timeouts: one caller `timeout` -> one deadline, for the composite provider, local models
and CLI agents alike."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from composite_llm.timeouts import timeout_seconds


@pytest.mark.parametrize("value, seconds", [
    (30, 30.0), (2.5, 2.5), ("30", 30.0), (" 2.5 ", 2.5),
    (httpx.Timeout(7.0), 7.0), (httpx.Timeout(60.0, read=5.0), 5.0), (openai.Timeout(9.0, connect=1.0), 9.0),
])
def test_a_deadline_in_seconds(value, seconds):
    assert timeout_seconds(value) == seconds


@pytest.mark.parametrize("value", [None, True, False, 0, 0.0, -3, "-1", math.inf, math.nan, "inf",
                                   httpx.Timeout(None), httpx.Timeout(5.0, read=None)])
def test_no_deadline(value):
    assert timeout_seconds(value) is None


@pytest.mark.parametrize("value", ["soon", object(), [5]])
def test_a_value_that_is_no_timeout_is_refused_not_dropped(value):
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        timeout_seconds(value)


def test_every_entry_point_reads_timeouts_through_the_one_rule():
    """No private copies left: the providers and the CLI runner import `timeout_seconds` itself."""
    from composite_llm import litellm_provider
    from composite_llm.cli_agents import runner
    from composite_llm.local import provider
    for module in (litellm_provider, runner, provider):
        assert module.timeout_seconds is timeout_seconds
