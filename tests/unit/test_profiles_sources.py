"""`profiles/sources.py`: the precedence of profile sources (explicit > $COMPOSITE_LLM_PROFILES > the proxy
block > ./profiles/), a broken source kept as its error, the proxy block read from the config file. A
fresh `ProfileRegistry` per test, temporary folders, a stand-in proxy module; no server."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import yaml

from composite_llm.errors import CompositeConfigError
from composite_llm.profiles import DEFAULT_MAX_INPUT_BYTES, PROFILES_ENV, ProfileRegistry, UnknownProfileError
from composite_llm.profiles.files import FILES


def _doc(name: str, aggregator: str) -> dict:
    return {"profiles": {name: {"strategy": "moa", "topology": {"aggregator": aggregator, "proposers": ["p"]}}}}


@pytest.fixture()
def place(tmp_path, monkeypatch):
    """An empty working directory, no profile variable, no proxy; returns a writer of YAML files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PROFILES_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "litellm.proxy.proxy_server", raising=False)
    FILES.clear()

    def write(relative: str, doc: dict) -> str:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc))
        return str(path)

    yield write
    FILES.clear()


def _aggregator(registry: ProfileRegistry, name: str) -> str:
    return registry.get(name).topology.aggregator.model


def test_sources_in_precedence_order(place, monkeypatch):
    registry = ProfileRegistry()
    place("profiles/local.yaml", _doc("p", "from-cwd"))
    assert _aggregator(registry, "p") == "from-cwd"
    config = place("proxy/config.yaml", {"general_settings": {"composite_llm": _doc("p", "from-proxy")}})
    monkeypatch.setitem(sys.modules, "litellm.proxy.proxy_server", SimpleNamespace(user_config_file_path=config))
    assert _aggregator(registry, "p") == "from-proxy"
    monkeypatch.setenv(PROFILES_ENV, place("env/p.yaml", _doc("p", "from-env")))
    assert _aggregator(registry, "p") == "from-env"
    registry.set_explicit(_doc("p", "explicit"))
    assert _aggregator(registry, "p") == "explicit"
    assert registry.names() == ["p"]


def test_a_broken_source_that_may_define_the_name_is_an_error_not_a_fallthrough(place, monkeypatch):
    registry = ProfileRegistry()
    place("profiles/good.yaml", _doc("p", "from-cwd"))
    monkeypatch.setenv(PROFILES_ENV, place("env/p.yaml", {"profiles": {"p": {"strategy": "nope"}}}))
    with pytest.raises(CompositeConfigError, match="nope"):
        registry.get("p")
    place("profiles/other.yaml", _doc("q", "from-cwd"))
    assert _aggregator(registry, "q") == "from-cwd"  # the broken file does not declare q


def test_an_unknown_profile_names_the_known_ones_and_the_sources(place):
    registry = ProfileRegistry()
    place("profiles/a.yaml", _doc("a", "x"))
    with pytest.raises(UnknownProfileError) as info:
        registry.get("b")
    assert info.value.known == ["a"] and "profiles" in info.value.searched


def test_a_snapshot_merges_document_settings_highest_precedence_first(place, monkeypatch):
    registry = ProfileRegistry()
    assert registry.snapshot().settings.max_input_bytes == DEFAULT_MAX_INPUT_BYTES  # no source sets it
    monkeypatch.setenv(PROFILES_ENV, place("env/a.yaml", {**_doc("a", "x"), "max_input_bytes": 10,
                                                          "allow_request_overrides": True}))
    registry.set_explicit({**_doc("b", "y"), "max_input_bytes": 20})
    settings = registry.snapshot().settings
    assert settings.max_input_bytes == 20 and settings.allow_request_overrides is True
