"""`profiles/files.py`: YAML errors with line numbers, one parse per file version (failures too), the last
good version served while a file is invalid, folders merged with broken files kept apart. Temporary files
only; no server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from composite_llm.errors import CompositeConfigError
from composite_llm.profiles import files
from composite_llm.profiles.documents import ProfileFileError


def _doc(*names: str) -> str:
    return yaml.safe_dump({"profiles": {n: {"strategy": "moa", "topology": {"aggregator": "a", "proposers": ["b"]}}
                                        for n in names}})


def _rewrite(path: Path, text: str) -> None:
    """A new version the cache must notice (mtime moved on, whatever the file system's resolution)."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


@pytest.fixture()
def counted(monkeypatch):
    parses: list[str] = []
    original = files.parse_document
    monkeypatch.setattr(files, "parse_document", lambda data, origin: parses.append(origin) or original(data, origin))
    files.FILES.clear()
    yield parses
    files.FILES.clear()


def test_invalid_yaml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("profiles:\n  p: [unclosed\n")
    with pytest.raises(ProfileFileError, match=r"bad\.yaml \(line \d+, column \d+\)"):
        files.read_yaml(path)


def test_one_parse_per_version_failures_included(tmp_path, counted):
    path = tmp_path / "p.yaml"
    path.write_text(_doc("one"))
    for _ in range(3):
        assert set(files.FILES.load(path).profiles) == {"one"}
    assert len(counted) == 1
    _rewrite(path, "profiles: {broken: {strategy: nope}}")
    for _ in range(3):
        assert set(files.FILES.load(path).profiles) == {"one"}  # the last good version, marked stale
    assert files.FILES.load(path).profiles["one"].stale and len(counted) == 2
    files.FILES.clear()
    with pytest.raises(ProfileFileError, match="nope"):  # no good version any more: the error, cached too
        files.FILES.load(path)
    with pytest.raises(ProfileFileError):
        files.FILES.load(path)
    assert len(counted) == 3


def test_a_folder_merges_its_files_and_keeps_a_broken_one_apart(tmp_path, counted):
    (tmp_path / "a.yaml").write_text(_doc("one"))
    (tmp_path / "b.yml").write_text(_doc("two"))
    (tmp_path / "c.yaml").write_text("profiles: {three: {strategy: nope}}")
    (tmp_path / "notes.txt").write_text("not a profile")
    source = files.load_path(tmp_path)
    assert set(source.profiles) == {"one", "two"}
    assert [e.may_define("three") for e in source.broken] == [True]
    assert not source.broken[0].may_define("one")


def test_the_same_profile_in_two_files_of_a_folder_is_an_error(tmp_path, counted):
    (tmp_path / "a.yaml").write_text(_doc("same"))
    (tmp_path / "b.yaml").write_text(_doc("same"))
    with pytest.raises(CompositeConfigError, match="'same' is defined twice"):
        files.load_path(tmp_path)


def test_load_profiles_takes_a_path_or_a_dict_and_nothing_else(tmp_path, counted):
    path = tmp_path / "p.yaml"
    path.write_text(_doc("one"))
    assert set(files.load_profiles(str(path)).profiles) == {"one"}
    assert set(files.load_profiles(yaml.safe_load(_doc("two"))).profiles) == {"two"}
    with pytest.raises(CompositeConfigError, match="does not exist"):
        files.load_profiles(tmp_path / "missing.yaml")
    with pytest.raises(CompositeConfigError, match="got int"):
        files.load_profiles(3)  # type: ignore[arg-type]


def test_document_settings_in_any_file_of_a_folder_apply_to_the_folder(tmp_path, counted):
    """Before, only max_input_bytes and trace_log survived the folder merge: `allow_request_overrides: true`
    or an `observability` block in a folder's file was dropped without a word."""
    (tmp_path / "a.yaml").write_text(_doc("one"))
    (tmp_path / "b.yaml").write_text(_doc("two") + "allow_request_overrides: true\n"
                                     "observability: {enabled: true, log_file: traces.jsonl}\nmax_input_bytes: 4096\n")
    settings = files.load_path(tmp_path).settings
    assert settings.allow_request_overrides is True
    assert settings.observability is not None and settings.observability.log_file == "traces.jsonl"
    assert settings.max_input_bytes == 4096


def test_two_files_of_a_folder_setting_one_key_differently_is_an_error(tmp_path, counted):
    (tmp_path / "a.yaml").write_text(_doc("one") + "max_input_bytes: 100\n")
    (tmp_path / "b.yaml").write_text(_doc("two") + "max_input_bytes: 200\n")
    with pytest.raises(CompositeConfigError, match=r"max_input_bytes is set differently .*b\.yaml"):
        files.load_path(tmp_path)
