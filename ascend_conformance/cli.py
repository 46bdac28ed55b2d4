"""`ascend-conformance` / `python -m ascend_conformance`: dispatch to the modules of `commands/`.

A `ConfigError` anywhere below becomes one line ``error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ascend_conformance.commands import COMMAND_MODULES
from ascend_conformance.errors import ConfigError, PlatformUnavailable


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage + message on bad flags; the contract is one line on stderr and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="ascend-conformance", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineErrorParser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"ascend_conformance.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ascend_conformance.commands.{name}":
                continue  # command not built yet in this checkout
            raise
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ConfigError, PlatformUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `... | head` closed stdout: not an error of ours; silence the flush at exit too.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
