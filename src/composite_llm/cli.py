"""The `composite-llm` command: one entry point, one subcommand per job.

    composite-llm proxy [--config FILE] [--host 127.0.0.1] [--port 4000] [-- <more litellm args>]

Subcommands live in COMMANDS (name -> Subcommand). `proxy` is defined here; the others live in their
packages (`eval/command.py`, `local/command.py`, ...) and plug in through `register_command_module`, listed
in COMMAND_MODULES. Keep heavy imports (litellm, llama.cpp, plotting) inside the run function, so
`composite-llm --help` stays fast.
"""

from __future__ import annotations

import argparse
from importlib import import_module, metadata
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

__all__ = ["COMMANDS", "COMMAND_MODULES", "Subcommand", "build_parser", "main", "register_command",
           "register_command_module"]


@dataclass(frozen=True)
class Subcommand:
    """One `composite-llm <name>` command.

    passthrough: unknown arguments are handed to the command (in `args.passthrough`) instead of being
    an error; the proxy uses it to forward options to `litellm`.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    passthrough: bool = False
    aliases: tuple[str, ...] = field(default_factory=tuple)


COMMANDS: dict[str, Subcommand] = {}


def register_command(command: Subcommand) -> Subcommand:
    """Add (or replace) a subcommand."""
    COMMANDS[command.name] = command
    return command


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    try:
        version = metadata.version("composite-llm")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        version = "unknown"
    parser = argparse.ArgumentParser(
        prog="composite-llm",
        description="Several LLM calls that look like one model (Mixture-of-Agents, LLM Council, CLIs).",
    )
    parser.add_argument("--version", action="version", version=f"composite-llm {version}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS.values():
        sub = subparsers.add_parser(command.name, help=command.help, aliases=list(command.aliases),
                                    description=command.description or command.help, formatter_class=_Formatter)
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    command: Subcommand | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help(sys.stderr)
        return 2
    if unknown and not command.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.passthrough = [a for a in unknown if a != "--"]
    return command.run(args)


# =========================================================================== proxy
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
PROXY_CONFIG = "litellm_proxy.yaml"
EXAMPLE_CONFIG = "litellm_proxy.example.yaml"
KEY_COMMAND = "python -c \"import secrets; print('sk-' + secrets.token_urlsafe(24))\""
# LiteLLM refuses to boot with this one (it is in every tutorial); say so before the proxy does.
WELL_KNOWN_KEYS = frozenset({"sk-1234"})


class ProxyStartError(Exception):
    """A problem found before starting the proxy; the message says how to fix it."""


def load_env_file(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Read `KEY=value` lines (optionally `export KEY=value`, quoted values, # comments) into `environ`.

    Variables already set win over the file, as with docker compose and python-dotenv. Returns the names
    that were set from the file.
    """
    environ = os.environ if environ is None else environ
    loaded = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ProxyStartError(f"{path}:{number}: expected NAME=value, got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if name not in environ:
            environ[name] = value
            loaded.append(name)
    return loaded


def find_proxy_config(explicit: str | None, cwd: Path) -> Path:
    """--config, else ./litellm_proxy.yaml, else ./litellm_proxy.example.yaml."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ProxyStartError(f"config file {path} not found")
        return path
    for name in (PROXY_CONFIG, EXAMPLE_CONFIG):
        if (cwd / name).is_file():
            return cwd / name
    raise ProxyStartError(f"no proxy config: pass --config FILE, or run from a folder with {PROXY_CONFIG} or "
                          f"{EXAMPLE_CONFIG} (the repository root has the example)")


def find_litellm(cwd: Path) -> str:
    """The `litellm` next to this Python (same venv), else ./.venv/bin/litellm, else the one on PATH."""
    for candidate in (Path(sys.executable).parent / "litellm", cwd / ".venv" / "bin" / "litellm"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("litellm")
    if found:
        return found
    raise ProxyStartError("the `litellm` command is not installed: pip install 'composite-llm[proxy]' "
                          "(or `make install` in the repository)")


def check_master_key(environ: dict[str, str]) -> None:
    key = environ.get(MASTER_KEY_ENV, "")
    if not key:
        raise ProxyStartError(f"{MASTER_KEY_ENV} is not set. Clients send it as their API key. Generate one:\n"
                              f"  export {MASTER_KEY_ENV}=$({KEY_COMMAND})\n"
                              f"or put {MASTER_KEY_ENV}=sk-... in .env (see sample.env)")
    if key in WELL_KNOWN_KEYS:
        raise ProxyStartError(f"{MASTER_KEY_ENV}={key} is a publicly known key and the proxy refuses it. "
                              f"Generate one: {KEY_COMMAND}")
    if not key.startswith("sk-"):
        raise ProxyStartError(f"{MASTER_KEY_ENV} must start with 'sk-'. Generate one: {KEY_COMMAND}")


def proxy_command(args: argparse.Namespace, environ: dict[str, str], cwd: Path) -> list[str]:
    """The litellm argv `composite-llm proxy` runs (also validates the environment)."""
    env_file = Path(args.env_file)
    if not env_file.is_absolute():
        env_file = cwd / env_file
    if env_file.is_file():
        load_env_file(env_file, environ)
    elif args.env_file != ".env":
        raise ProxyStartError(f"env file {env_file} not found")
    environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # pinned litellm's own price map, no download
    check_master_key(environ)
    config = find_proxy_config(args.config, cwd)
    host = args.host or environ.get("HOST") or "127.0.0.1"
    port = str(args.port or environ.get("PORT") or 4000)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ProxyStartError(f"invalid port {port!r}")
    argv = [find_litellm(cwd), "--config", str(config), "--host", host, "--port", port]
    if args.num_workers:
        argv += ["--num_workers", str(args.num_workers)]
    return argv + list(args.passthrough)


def _add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help=f"LiteLLM proxy config (default: ./{PROXY_CONFIG} if present, else "
                                         f"./{EXAMPLE_CONFIG})")
    parser.add_argument("--host", help="address to bind; $HOST, else 127.0.0.1 (use 0.0.0.0 only behind a "
                                       "firewall or load balancer)")
    parser.add_argument("--port", type=int, help="port; $PORT, else 4000")
    parser.add_argument("--num-workers", type=int, help="uvicorn worker processes (LiteLLM --num_workers)")
    parser.add_argument("--env-file", default=".env", help="KEY=value file loaded first if it exists "
                                                           "(variables already set win)")
    parser.add_argument("--dry-run", action="store_true", help="print the litellm command and exit")


def _run_proxy(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    try:
        argv = proxy_command(args, environ, Path.cwd())
    except ProxyStartError as exc:
        print(f"composite-llm proxy: {exc}", file=sys.stderr)
        return 2
    printable = " ".join(shlex.quote(a) for a in argv)
    if args.dry_run:
        print(printable)
        return 0
    host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
    print(f"composite-llm proxy: {printable}\n  OpenAI base URL: http://{host}:{port}/v1 "
          f"(API key: ${MASTER_KEY_ENV}); ready in ~10 s", file=sys.stderr, flush=True)
    os.execve(argv[0], argv, environ)  # no shell; the proxy replaces this process (signals go to it)
    return 0  # pragma: no cover


register_command(Subcommand(
    name="proxy",
    help="run the LiteLLM proxy serving composite models under public names",
    description=(
        "Run the LiteLLM proxy with composite-llm's provider, as scripts/run_proxy_from_env.sh does.\n"
        "Loads .env if present, needs LITELLM_MASTER_KEY, binds 127.0.0.1:4000 by default.\n"
        "Arguments after `--` go to litellm unchanged, e.g.: composite-llm proxy -- --detailed_debug"
    ),
    add_arguments=_add_proxy_arguments,
    run=_run_proxy,
    passthrough=True,
))


def register_command_module(module: ModuleType | str) -> Subcommand:
    """Register a command that lives in its own module: the one hook satellites (and plugins) plug into.

    The module defines NAME, HELP, DESCRIPTION, `add_arguments(parser)` and `run(args) -> int`, and imports
    only light modules at its top (argparse): every module here is imported to build `composite-llm --help`.
    A string is imported first.
    """
    if isinstance(module, str):
        module = import_module(module)
    return register_command(Subcommand(name=module.NAME, help=module.HELP, description=module.DESCRIPTION,
                                       add_arguments=module.add_arguments, run=module.run))


#: The satellites' commands, each in its own package (the package's `__init__` must stay light too).
COMMAND_MODULES = (
    "composite_llm.eval.command",
    "composite_llm.eval.tune_command",
    "composite_llm.dashboard.command",
    "composite_llm.local.command",
    "composite_llm.cli_agents.command",
)
for _module in COMMAND_MODULES:
    register_command_module(_module)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
