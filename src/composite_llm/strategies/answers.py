"""Answers as votes: extraction, majority tallies, and parsing what judges and reviewers reply.

Pure functions over text, shared by the voting strategies (self-consistency, debate), the judging ones
(best-of-n, universal self-consistency) and the council's ranking parser. An extractor turns one sample's
full text into a normalized answer key (or None when it finds none); `tally` counts keys; ties are broken
by the earliest sample, a rule the strategies state in the trace.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Callable, Literal, Sequence

from pydantic import Field, model_validator

from ..schema import FanOutSettings

ExtractMethod = Literal["numeric", "choice", "last_line", "regex", "json_field", "exact", "free"]
Extractor = Callable[[str], str | None]


class ExtractionSettings(FanOutSettings):
    """How an answer is read out of a sample's text (the fan-out fields apply to the sampling stage).

    extract: numeric (the final number; `answer is`, `####` and `\\boxed{}` win over a later number),
        choice (a multiple-choice letter from `choices`), last_line (the last non-empty line), regex
        (`pattern`: its `answer` group, else group 1, else the whole match; last match wins),
        json_field (`field`, dotted path, of the last JSON object that has it), exact (the whole text,
        whitespace-collapsed), free (no extraction: free-form answers, a judge decides).
    case_sensitive: compare text answers (last_line, regex, json_field, exact) with case.
    """

    extract: ExtractMethod = "numeric"
    pattern: str | None = None
    field: str | None = None
    choices: str = Field(default="ABCDE", min_length=2, pattern=r"^[A-Z]+$")
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _extraction_args(self) -> "ExtractionSettings":
        if self.extract == "regex":
            if not self.pattern:
                raise ValueError("settings.extract=regex needs settings.pattern (a regular expression)")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"settings.pattern is not a valid regular expression: {exc}") from None
        elif self.pattern is not None:
            raise ValueError(f"settings.pattern is only used with extract=regex (extract is {self.extract})")
        if self.extract == "json_field":
            if not self.field:
                raise ValueError("settings.extract=json_field needs settings.field (e.g. answer or result.value)")
        elif self.field is not None:
            raise ValueError(f"settings.field is only used with extract=json_field (extract is {self.extract})")
        return self


# --------------------------------------------------------------------------- normalization
def normalize_text(text: str, case_sensitive: bool = False) -> str:
    flat = " ".join(str(text).split())
    return flat if case_sensitive else flat.casefold()


def canonical_number(text: str) -> str | None:
    """'1,234.50' -> '1234.5', '-0.0' -> '0', '3/6' -> '1/2', '.5' -> '0.5'; None if not a number."""
    raw = text.strip().replace(",", "").replace("\u2212", "-").replace("$", "").rstrip("%").strip()
    try:
        if "/" in raw:
            num, _, den = raw.partition("/")
            value = Fraction(int(num.strip()), int(den.strip()))
        else:
            value = Fraction(Decimal(raw))
    except (ValueError, ZeroDivisionError, InvalidOperation):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    while den % 2 == 0:
        den //= 2
    while den % 5 == 0:
        den //= 5
    if den == 1:  # a terminating decimal: print it exactly, without trailing zeros
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value.numerator}/{value.denominator}"


# A number not glued to a word: optional sign (not a minus between two operands), thousands groups,
# decimals, or a fraction a/b.
_NUMBER = re.compile(
    r"(?<![\w.\-\u2212/])"
    r"(?:(?<![\w)])[-\u2212])?"
    r"\$?"
    r"(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?"
    r"(?:\s*/\s*\d+)?"
)
_ANSWER_MARKERS = re.compile(
    r"(?:\\boxed\s*\{|####|\banswer\s*(?:is|=|:)|\bfinal\s+answer\b\s*(?:is|=|:)?|\bresult\s*(?:is|=|:))",
    re.IGNORECASE,
)


def _numbers(text: str) -> list[str]:
    found = []
    for match in _NUMBER.finditer(text):
        token = match.group(0)
        if not re.search(r"\d", token):
            continue
        value = canonical_number(token)
        if value is not None:
            found.append(value)
    return found


def extract_numeric(text: str) -> str | None:
    """The answer number: the first one after the last answer marker (on the marker's line; after its
    last '=' when the line is an equation), else the last number of the text."""
    markers = list(_ANSWER_MARKERS.finditer(text))
    for marker in reversed(markers):
        line = text[marker.end():marker.end() + 200].lstrip().split("\n", 1)[0]
        if "=" in line:
            after_equals = _numbers(line.rsplit("=", 1)[1])
            if after_equals:
                return after_equals[0]
        after = _numbers(line)
        if after:
            return after[0]
    numbers = _numbers(text)
    return numbers[-1] if numbers else None


def extract_choice(text: str, choices: str = "ABCDE") -> str | None:
    """A multiple-choice letter: after `answer is`/`answer:`, or the whole reply, or the last `(X)`, or
    the last standalone capital letter among `choices`."""
    letters = re.escape(choices)
    marked = list(re.finditer(
        rf"(?i:\banswer)\s*(?:is|:)?\s*[:\-]?\s*(?:\*\*)?\s*"
        rf"(?:\(([{letters}{letters.lower()}])\)|([{letters}])(?![\w']))",
        text,
    ))
    if marked:
        last = max(marked, key=lambda m: m.start())
        return (last.group(1) or last.group(2)).upper()
    whole = re.fullmatch(rf"\s*\**\(?([{letters}])[).:]?\**\s*", text)
    if whole:
        return whole.group(1)
    parenthesized = re.findall(rf"\(([{letters}])\)", text)
    if parenthesized:
        return parenthesized[-1]
    standalone = re.findall(rf"(?<![\w'])([{letters}])(?![\w'])", text)
    return standalone[-1] if standalone else None


def extract_last_line(text: str, case_sensitive: bool = False) -> str | None:
    for line in reversed(text.strip().splitlines()):
        cleaned = re.sub(r"[*_`#>]+", "", line).strip()
        cleaned = re.sub(r"^(?:final\s+answer|answer)\s*[:\-]\s*", "", cleaned, flags=re.IGNORECASE)
        cleaned = cleaned.strip().rstrip(".").strip()
        if cleaned:
            return normalize_text(cleaned, case_sensitive)
    return None


def extract_regex(text: str, pattern: str, case_sensitive: bool = False) -> str | None:
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    last = matches[-1]
    if "answer" in last.re.groupindex:
        value = last.group("answer")
    elif last.re.groups:
        value = last.group(1)
    else:
        value = last.group(0)
    return normalize_text(value, case_sensitive) if value is not None and value.strip() else None


def _json_objects(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    objects = []
    for match in re.finditer(r"[{\[]", text):
        try:
            value, _end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        objects.append(value)
    return objects


def _lookup(value: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def extract_json_field(text: str, path: str, case_sensitive: bool = False) -> str | None:
    """The field (dotted path, list indices allowed) of the last JSON value in the text that has it.
    Numbers compare by value (42 == 42.0), strings as normalized text, others as canonical JSON."""
    for obj in reversed(_json_objects(text)):
        found, value = _lookup(obj, path)
        if not found or value is None:
            continue
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (int, float)):
            return canonical_number(repr(value))
        if isinstance(value, str):
            return normalize_text(value, case_sensitive) if value.strip() else None
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return None


def make_extractor(settings: ExtractionSettings) -> Extractor:
    """The extraction function the settings describe ('free' extracts nothing)."""
    method, case = settings.extract, settings.case_sensitive
    if method == "numeric":
        return extract_numeric
    if method == "choice":
        return lambda text: extract_choice(text, settings.choices)
    if method == "last_line":
        return lambda text: extract_last_line(text, case)
    if method == "regex":
        pattern = settings.pattern or ""
        return lambda text: extract_regex(text, pattern, case)
    if method == "json_field":
        path = settings.field or ""
        return lambda text: extract_json_field(text, path, case)
    if method == "exact":
        return lambda text: normalize_text(text, case) or None
    return lambda text: None


# --------------------------------------------------------------------------- voting
@dataclass
class VoteRow:
    answer: str
    count: int
    voters: list[int] = field(default_factory=list)  # positions in the input list, earliest first


@dataclass
class Tally:
    """Votes per answer, most votes first; equal counts in order of their earliest voter."""

    rows: list[VoteRow]
    abstained: list[int]
    total: int

    @property
    def leader(self) -> VoteRow | None:
        return self.rows[0] if self.rows else None

    @property
    def tied(self) -> list[VoteRow]:
        """The rows sharing the top count (one row when there is a clear winner)."""
        return [r for r in self.rows if r.count == self.rows[0].count] if self.rows else []

    @property
    def leader_share(self) -> float:
        """The leader's votes over every input (abstentions included)."""
        return self.rows[0].count / self.total if self.rows and self.total else 0.0

    def decided(self, remaining: int) -> bool:
        """True when `remaining` more votes cannot change the winner under the earliest-voter rule."""
        if not self.rows:
            return False
        runner_up = self.rows[1].count if len(self.rows) > 1 else 0
        return self.rows[0].count > runner_up + remaining

    def to_list(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        def name(i: int) -> Any:
            return names[i] if names is not None else i
        return [{"answer": r.answer, "count": r.count, "voters": [name(i) for i in r.voters]} for r in self.rows]


def tally(answers: Sequence[str | None]) -> Tally:
    """Count answer keys; None is an abstention (a sample with no extractable answer)."""
    rows: dict[str, VoteRow] = {}
    abstained = []
    for index, answer in enumerate(answers):
        if answer is None:
            abstained.append(index)
            continue
        row = rows.setdefault(answer, VoteRow(answer, 0))
        row.count += 1
        row.voters.append(index)
    ordered = sorted(rows.values(), key=lambda r: (-r.count, r.voters[0]))
    return Tally(rows=ordered, abstained=abstained, total=len(answers))


def render_tally(table: Tally, names: Sequence[str], winner: str | None = None) -> str:
    """Readable vote table: one line per answer, most votes first."""
    lines = []
    for row in table.rows:
        mark = "  ← chosen" if row.answer == winner else ""
        lines.append(f"{row.answer!s}: {row.count} of {table.total} ({', '.join(names[i] for i in row.voters)}){mark}")
    if table.abstained:
        lines.append(f"no answer found: {', '.join(names[i] for i in table.abstained)}")
    return "\n".join(lines) or "no answers"


# --------------------------------------------------------------------------- judge replies
# A verdict is read from the judge's (reviewer's) own words only. Judges see member text, and may quote
# it; a member can plant a verdict-shaped line ("SCORE: 10", "FINAL RANKING: 1. Response C") for a judge
# to quote. So a verdict match is skipped when it sits in a span the judge copied from the material it
# was shown (`quoted_from`), and a reply cut off by its token limit (`truncated`) never reached its own
# final line: whatever verdict-shaped text it holds was written before it, most likely quoted.
_SCORE = re.compile(r"SCORE\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\b)?", re.IGNORECASE)
_OUT_OF_TEN = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*10\b", re.IGNORECASE)
_WINNER = re.compile(r"WINNER\s*[:=]\s*\**\s*(?:Response\s+)?\(?([AB])\)?(?![\w])", re.IGNORECASE)
_CONSISTENT = re.compile(r"most\s+consistent\s+response\s+is\s*:?\s*\**\s*Response\s+([A-Z]{1,2})\b", re.IGNORECASE)
_RESPONSE_LABEL = re.compile(r"\bResponse\s+([A-Z]{1,2})\b")
_FINAL_RANKING = re.compile(r"FINAL\s+RANKING\s*:?", re.IGNORECASE)
_QUOTE_MARGIN = 12  # characters of agreement around a verdict that make it a copy, not a coincidence
_QUOTE_MARKS = re.compile(r"^[ \t]*(?:>[ \t]?)+", re.MULTILINE)


def _unquoted(text: str) -> str:
    """The text without markdown quote marks at line starts, so a `> `-quoted copy compares as a copy."""
    return _QUOTE_MARKS.sub("", text)


def _quoted_at(text: str, start: int, end: int, sources: Sequence[str]) -> bool:
    """True when `text[start:end]` (a verdict-shaped match) was copied from a source: it occurs there
    and the text around it agrees with the source's for at least _QUOTE_MARGIN more characters. A judge
    whose own verdict happens to read like a line in a source is not caught: its surroundings differ."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    needle = text[start:end]
    if not needle:
        return False
    for source in sources:
        source = _unquoted(source)
        pos = source.find(needle)
        while pos >= 0:
            left = 0
            while (left < _QUOTE_MARGIN and left < start and left < pos
                   and text[start - left - 1] == source[pos - left - 1]):
                left += 1
            right, tail = 0, pos + len(needle)
            while right < _QUOTE_MARGIN and end + right < len(text) and tail + right < len(source) and (
                    text[end + right] == source[tail + right]):
                right += 1
            if left + right >= _QUOTE_MARGIN:
                return True
            pos = source.find(needle, pos + 1)
    return False


def own_words(text: str, sources: Sequence[str]) -> str:
    """The reply without the lines of `sources` it copied, whole or inline (for the fallback readings,
    which look for labels anywhere in the text). Source lines under 8 characters are too common to tell."""
    for source in sources:
        for line in sorted({line.strip() for line in _unquoted(source).splitlines()}, key=len, reverse=True):
            if len(line) >= 8:
                text = text.replace(line, "")
    return text


def parse_score(text: str, low: float = 1, high: float = 10, *, quoted_from: Sequence[str] = (),
                truncated: bool = False) -> float | None:
    """The last own `SCORE: n` (also `SCORE: n/10`) within [low, high]; without a SCORE line, the last
    `n/10` or `n out of 10` (weak judges often write that). None if absent, out of range or cut off."""
    if truncated:
        return None
    text = _unquoted(text)
    own = [m for m in _SCORE.finditer(text) if not _quoted_at(text, m.start(), m.end(), quoted_from)]
    matches = [m.group(1) for m in own] or _OUT_OF_TEN.findall(own_words(text, quoted_from))
    if not matches:
        return None
    value = float(matches[-1])
    return value if low <= value <= high else None


def parse_winner(text: str, *, quoted_from: Sequence[str] = (), truncated: bool = False) -> str | None:
    """'A' or 'B' from the last own `WINNER: A|B` line; None if absent or cut off."""
    if truncated:
        return None
    text = _unquoted(text)
    own = [m.group(1) for m in _WINNER.finditer(text) if not _quoted_at(text, m.start(), m.end(), quoted_from)]
    return own[-1].upper() if own else None


def parse_picked_label(text: str, labels: Sequence[str], *, quoted_from: Sequence[str] = (),
                       truncated: bool = False) -> tuple[str | None, str]:
    """The label a judge picked: after its own 'most consistent response is' (the reply starts with
    it, so a cut-off reply still has it), else the only label named in its own words (not when cut
    off). Returns (label or None, how it was read)."""
    valid = {label.split()[-1] for label in labels}
    text = _unquoted(text)
    for match in _CONSISTENT.finditer(text):
        if match.group(1).upper() in valid and not _quoted_at(text, match.start(), match.end(), quoted_from):
            return f"Response {match.group(1).upper()}", "marker"
    if truncated:
        return None, "cut off"
    named = {m.group(1) for m in _RESPONSE_LABEL.finditer(own_words(text, quoted_from)) if m.group(1) in valid}
    if len(named) == 1:
        return f"Response {named.pop()}", "only label named"
    return None, "unparsed"


def parse_ranking(text: str, labels: Sequence[str], *, quoted_from: Sequence[str] = (),
                  truncated: bool = False) -> tuple[list[str], str]:
    """Labels in ranked order from a review, and how they were read.

    Reads the reviewer's own final section: the labels after its last `FINAL RANKING:` marker
    ("final_ranking"). When that block was copied from a member's answer, the reviewer wrote no ranking
    of its own and gets no vote ("quoted"). Without a block, falls back to the order in which labels are
    first mentioned in the reviewer's own words ("fallback"). A review cut off by its token limit gets no
    vote ("truncated"): it never wrote its final section. Unknown and repeated labels are skipped; "none"
    when nothing is usable."""
    if truncated:
        return [], "truncated"
    valid = {label.split()[-1] for label in labels}
    text = _unquoted(text)

    def ranked_in(section: str) -> tuple[list[str], int]:
        ranked: list[str] = []
        end = 0
        for found in _RESPONSE_LABEL.finditer(section):
            letter = found.group(1)
            if letter in valid and f"Response {letter}" not in ranked:
                ranked.append(f"Response {letter}")
                end = found.end()
        return ranked, end

    markers = list(_FINAL_RANKING.finditer(text))
    if markers:
        last = markers[-1]
        ranked, end = ranked_in(text[last.end():])
        if ranked and _quoted_at(text, last.start(), last.end() + end, quoted_from):
            return [], "quoted"  # its last ranking is a member's, copied: it wrote none of its own
        if ranked:
            return ranked, "final_ranking"
        text = text[: last.start()]
    ranked, _ = ranked_in(own_words(text, quoted_from))
    return ranked, ("fallback" if ranked else "none")
