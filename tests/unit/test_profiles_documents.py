"""`profiles/documents.py` and the package's public face: the load errors, the error-body helpers, stale
copies, and the names the library, tests and docs import from `composite_llm.profiles`. No I/O."""

from __future__ import annotations

import importlib

from composite_llm import profiles
from composite_llm.profiles.documents import (MAX_ERROR_CHARS, LoadedSource, ProfileFileError, UnknownProfileError,
                                              capped, first_problem, stale_copy)
from composite_llm.profiles.validation import parse_document

IMPORTED_ELSEWHERE = ("REGISTRY", "PROFILES_ENV", "DEFAULT_MAX_INPUT_BYTES", "MAX_ERROR_CHARS", "DocumentSettings",
                      "LoadedProfile", "LoadedSource", "ProfileFileError", "ProfileSource", "UnknownProfileError",
                      "forget_cached_documents", "iter_nodes", "load_profiles", "load_proxy_block", "parse_document")


def test_the_package_exports_what_code_tests_and_docs_import():
    for name in IMPORTED_ELSEWHERE:
        assert hasattr(profiles, name), name
    assert set(profiles.__all__) >= set(IMPORTED_ELSEWHERE)
    assert importlib.import_module("composite_llm.request").REGISTRY is profiles.REGISTRY  # one registry


def test_unknown_profile_error_words_itself_for_the_operator_and_for_a_proxy_client():
    error = UnknownProfileError("nope", ["a", "b"], "/etc/secret/profiles")
    assert "known profiles: a, b" in str(error) and "/etc/secret/profiles" in str(error)
    client = error.for_proxy_client(["composite/profile/a"])
    assert "composite/profile/a" in client and "/etc/secret" not in client
    assert "does not define it" in error.for_proxy_client(None)


def test_a_file_error_affects_only_the_profiles_it_declares():
    assert ProfileFileError("broken", declared=frozenset({"x"})).may_define("x")
    assert not ProfileFileError("broken", declared=frozenset({"x"})).may_define("y")
    assert ProfileFileError("unreadable").may_define("anything")  # nothing known: it may define any name


def test_error_bodies_are_capped_and_summarised_on_one_line():
    long = "x" * (MAX_ERROR_CHARS * 2)
    assert len(capped(long)) <= MAX_ERROR_CHARS and "characters, cut" in capped(long)
    assert capped("short") == "short"
    error = ValueError("invalid composite profiles in f.yaml:\n  - profile 'p': topology: bad\n  - more")
    assert first_problem(error) == "invalid composite profiles in f.yaml: profile 'p': topology: bad"
    assert first_problem(ValueError("")) == "ValueError"


def test_a_stale_copy_marks_every_profile_and_leaves_the_original_alone():
    topology = {"aggregator": "a", "proposers": ["b"]}
    source = parse_document({"profiles": {"p": {"strategy": "moa", "topology": topology}}}, "doc")
    stale = stale_copy(source, "became invalid")
    assert stale.profiles["p"].stale == "became invalid" and source.profiles["p"].stale is None
    assert isinstance(stale, LoadedSource) and stale.origin == "doc"
