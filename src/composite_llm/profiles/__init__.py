"""Profiles: named topologies in YAML files, folders, Python dicts or the proxy's general_settings.

One schema everywhere (a profile document):

    providers:                      # shared connection bundles, referenced by nodes
      cerebras: {litellm_params: {api_key: os.environ/CEREBRAS_API_KEY}}
    profiles:
      moa_light:
        strategy: moa
        description: ...
        topology: {aggregator: {...}, proposers: [...], settings: {...}}

One module per job: `documents` (the document models and load errors), `validation` (every problem of a
document at once, with the field path), `files` (YAML files and folders, cached per file version), `sources`
(the source registry and its precedence, the proxy's `general_settings.composite_llm` block). What the rest
of the library, the tests and the docs use is re-exported here.
"""

from __future__ import annotations

from .documents import (DEFAULT_MAX_INPUT_BYTES, MAX_ERROR_CHARS, MAX_LISTED_PROBLEMS, DocumentSettings,
                        LoadedProfile, LoadedSource, ProfileFileError, ProfileSpec, TraceLogConfig,
                        UnknownProfileError)
from .files import YAML_SUFFIXES, ProfileSource, load_profiles
from .sources import (DEFAULT_PROFILE_DIR, PROFILES_ENV, REGISTRY, ProfileRegistry, ProfileSnapshot,
                      forget_cached_documents, load_proxy_block)
from .validation import iter_nodes, parse_document

__all__ = [
    "DEFAULT_MAX_INPUT_BYTES", "DEFAULT_PROFILE_DIR", "MAX_ERROR_CHARS", "MAX_LISTED_PROBLEMS", "PROFILES_ENV",
    "REGISTRY", "YAML_SUFFIXES", "DocumentSettings", "LoadedProfile", "LoadedSource", "ProfileFileError",
    "ProfileRegistry", "ProfileSnapshot", "ProfileSource", "ProfileSpec", "TraceLogConfig", "UnknownProfileError",
    "forget_cached_documents", "iter_nodes", "load_profiles", "load_proxy_block", "parse_document",
]
