"""The ``nxm`` command line. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int`` as the default.
Modules are discovered automatically, so adding a subcommand touches only its own file.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import pkgutil
import sys

from .._version import __version__

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """A subcommand's parser; ``lazy(parser)``, if a subcommand sets it, adds options the first time the
    parser is used, so that building ``nxm``'s parser imports nothing a command does not need."""

    lazy = None

    def _complete(self) -> None:
        if self.lazy is not None:
            add, self.lazy = self.lazy, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    # exit_on_error=False: a value its type refuses (a bad --plan) reaches main(), which says so in one line.
    parser = argparse.ArgumentParser(prog="nxm", description="2:4 sparse + int8/int4 BERT compression and kernels",
                                     exit_on_error=False)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--version", action="version", version=f"%(prog)s (nxm-kernels) {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to do (nxm COMMAND -h for its options)",
                                parser_class=functools.partial(_Parser, exit_on_error=False))
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    parser.commands = tuple(sub.choices)  # for main()'s error line
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as exc:  # named like the errors a command raises below
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
        command = next((w for w in words if w in parser.commands), None)
        print(f"nxm{' ' + command if command else ''}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        # Bad input from the command line: a clear one-line message, not a traceback.
        if args.verbose:
            raise
        print(f"nxm {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
