"""Scorers: is an answer right? Each returns a Score (correct, what was extracted, why).

- exact:    the whole answer equals `expected` after normalization (whitespace collapsed, case folded unless
            case_sensitive, surrounding quotes/markdown/final period and an `Answer:` prefix removed).
- contains: `expected` (or one of `aliases`) occurs as a whole word or phrase.
- regex:    `pattern` (default: `expected`) matches somewhere (re.search; `^` anchors at the answer's start,
            case-insensitive unless case_sensitive).
- numeric:  the answer's final number (the same extraction self-consistency votes with: the number after
            the last `answer is` / `Answer:` / `####` / `\\boxed{`, else the last number) is within
            `tolerance` (default 1e-9) of `expected`. `1,000` = `1000.0`; `3/4` = `0.75`; number words count
            as numbers (`seven continents` = 7, `twenty-one` = 21, `one hundred and five` = 105).
- llm_judge: a judge model reads the question, the reference answer and the response, and replies
            VERDICT: CORRECT or VERDICT: INCORRECT (JUDGE_PROMPT). Its tokens and cost are recorded apart
            from the evaluated model's.

Reasoning blocks (`<think>...</think>`) are removed before scoring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Callable

from .tasks import Task

DEFAULT_TOLERANCE = 1e-9

JUDGE_PROMPT = """\
You are grading an answer to a question against a reference answer.

Question:
{question}

Reference answer:
{expected}

Response to grade:
{answer}

The response is CORRECT if its final answer means the same as the reference answer (wording, units
written out, extra explanation and formatting do not matter). It is INCORRECT if the final answer differs,
is missing, hedges between several answers, or contradicts the reference.
Reply with one line and nothing else: VERDICT: CORRECT or VERDICT: INCORRECT"""

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_VERDICT = re.compile(r"\b(INCORRECT|CORRECT)\b", re.IGNORECASE)


@dataclass
class Score:
    correct: bool
    extracted: str | None = None
    detail: str = ""
    judge: dict[str, Any] = field(default_factory=dict)  # llm_judge: model, verdict text, usage, cost


def strip_reasoning(text: str) -> str:
    return _THINK.sub("", text or "").strip()


# --------------------------------------------------------------------------- normalization
def parse_number(text: str) -> Fraction | None:
    """'1,234.5' / '-0.0' / '3/4' / '$12' / '50%' as an exact Fraction; None if not a number."""
    raw = str(text).strip().replace(",", "").replace("\u2212", "-").replace("$", "").rstrip("%").strip()
    try:
        if "/" in raw:
            num, _, den = raw.partition("/")
            return Fraction(int(num.strip()), int(den.strip()))
        return Fraction(Decimal(raw))
    except (ValueError, ZeroDivisionError, InvalidOperation):
        return None


_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)


def normalize_answer(text: str, case_sensitive: bool = False) -> str:
    flat = " ".join(str(text).split())
    flat = flat.replace("**", "").replace("`", "").strip()
    flat = _ANSWER_PREFIX.sub("", flat)
    flat = flat.strip(" \"'“”‘’").rstrip(".!").strip(" \"'“”‘’")
    return flat if case_sensitive else flat.casefold()


# --------------------------------------------------------------------------- scorers
def score_exact(task: Task, answer: str) -> Score:
    got = normalize_answer(answer, task.case_sensitive)
    accepted = [normalize_answer(e, task.case_sensitive) for e in (task.expected, *task.aliases)]
    return Score(got in accepted, extracted=got[:200])


def _phrase_pattern(phrase: str) -> str:
    escaped = r"\s+".join(re.escape(part) for part in phrase.split())
    return rf"(?<!\w){escaped}(?!\w)"


def score_contains(task: Task, answer: str) -> Score:
    flags = 0 if task.case_sensitive else re.IGNORECASE
    for candidate in (task.expected, *task.aliases):
        if candidate.strip() and re.search(_phrase_pattern(candidate.strip()), answer, flags):
            return Score(True, extracted=candidate)
    return Score(False, detail="not found")


def score_regex(task: Task, answer: str) -> Score:
    flags = 0 if task.case_sensitive else re.IGNORECASE
    match = re.search(task.pattern or task.expected, answer.strip(), flags)
    return Score(match is not None, extracted=match.group(0)[:200] if match else None)


_UNITS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_TENS = {word: 10 * (index + 2) for index, word in enumerate(
    "twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_NUMBER_WORD = "|".join(sorted([*_UNITS, *_TENS, *_SCALES], key=len, reverse=True))
_NUMBER_PHRASE = re.compile(
    rf"(?<![\w-])(?:{_NUMBER_WORD})(?:(?:[\s-]+|\s+and\s+)(?:{_NUMBER_WORD}))*(?![\w-])", re.IGNORECASE)
# "one" as a pronoun is not a number: "no one", "any one of", "the one that"
_PRONOUN_ONE = re.compile(r"\b(?:no|any|every|each|some|the|this|that|which)\s+one\b", re.IGNORECASE)


def _phrase_value(phrase: str) -> int | None:
    """The value of a number-word phrase ("one hundred and five" -> 105); None if it is not well formed."""
    words = [w for w in re.split(r"[\s-]+", phrase.lower()) if w and w != "and"]
    total, current, last = 0, 0, None
    for word in words:
        if word in _UNITS:
            if last == "unit":
                return None  # "five six" is two numbers, not one
            current += _UNITS[word]
            last = "unit"
        elif word in _TENS:
            if last in ("unit", "tens"):
                return None
            current += _TENS[word]
            last = "tens"
        else:
            scale = _SCALES[word]
            current = max(current, 1) * scale
            if scale > 100:  # "two thousand three hundred": thousands close a group, hundreds do not
                total, current = total + current, 0
            last = "scale"
    return total + current


def number_words_to_digits(text: str) -> str:
    """Spelled-out numbers as digits ("seven continents" -> "7 continents", "twenty-one" -> "21"), so the
    numeric scorer reads them as it reads digits. Pronoun uses of "one" ("no one") are left alone; a
    phrase that is not one well-formed number ("five six") is left as written."""
    protected = _PRONOUN_ONE.sub(lambda m: m.group(0).replace("one", "\x00"), text)

    def replace(match: re.Match[str]) -> str:
        value = _phrase_value(match.group(0))
        return match.group(0) if value is None else str(value)

    return _NUMBER_PHRASE.sub(replace, protected).replace("\x00", "one")


def extract_final_number(answer: str) -> str | None:
    """The answer's final number, as self-consistency and debate read it, number words counted as numbers."""
    from ..strategies.answers import extract_numeric  # imports litellm; only when scoring

    return extract_numeric(number_words_to_digits(answer))


def score_numeric(task: Task, answer: str) -> Score:
    extracted = extract_final_number(answer)
    if extracted is None:
        return Score(False, detail="no number in the answer")
    got, want = parse_number(extracted), parse_number(task.expected)
    shown = extracted[:200]  # as score_regex keeps it: a runaway answer's number can be hundreds of digits
    if got is None or want is None:
        return Score(False, extracted=shown, detail="not comparable")
    tolerance = task.tolerance if task.tolerance is not None else DEFAULT_TOLERANCE
    # Exact Fractions throughout: a runaway answer (a 400-digit number) overflows float() and is simply wrong.
    return Score(abs(got - want) <= Fraction(tolerance), extracted=shown)


SYNC_SCORERS: dict[str, Callable[[Task, str], Score]] = {
    "exact": score_exact,
    "contains": score_contains,
    "regex": score_regex,
    "numeric": score_numeric,
}


def parse_verdict(text: str) -> bool | None:
    """CORRECT -> True, INCORRECT -> False, from the judge's last verdict word; None if there is none."""
    after = text.rsplit("VERDICT", 1)[-1] if "VERDICT" in text.upper() else text
    found = _VERDICT.findall(after) or _VERDICT.findall(text)
    if not found:
        return None
    return found[-1].upper() == "CORRECT"


async def judge_answer(task: Task, answer: str, judge_model: str, *, call_kwargs: dict[str, Any] | None = None,
                       timeout: float | None = None) -> Score:
    """Ask `judge_model` whether `answer` matches the task's expected answer."""
    import litellm

    prompt = JUDGE_PROMPT.format(question=task.question, expected=task.expected, answer=answer)
    kwargs = dict(call_kwargs or {})
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 32)
    response = await litellm.acompletion(model=judge_model, messages=[{"role": "user", "content": prompt}],
                                         timeout=timeout, **kwargs)
    text = response.choices[0].message.content or ""
    usage = getattr(response, "usage", None)
    cost = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    verdict = parse_verdict(strip_reasoning(text))
    info = {
        "model": judge_model,
        "reply": text[:200],
        "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "cost": cost,
    }
    if verdict is None:
        return Score(False, detail="judge verdict unreadable", judge=info)
    return Score(verdict, extracted="CORRECT" if verdict else "INCORRECT", judge=info)


async def score_answer(task: Task, answer: str, *, judge_model: str | None = None,
                       judge_kwargs: dict[str, Any] | None = None, timeout: float | None = None) -> Score:
    """Score one answer with the task's scorer (llm_judge needs `judge_model`)."""
    text = strip_reasoning(answer)
    if task.scorer == "llm_judge":
        if not judge_model:
            raise ValueError(f"task {task.id} uses scorer llm_judge: pass a judge model (--judge MODEL)")
        return await judge_answer(task, text, judge_model, call_kwargs=judge_kwargs, timeout=timeout)
    return SYNC_SCORERS[task.scorer](task, text)
