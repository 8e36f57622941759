"""The ``udiff`` command: one sub-command per module of :mod:`udiff.commands`. User errors print
one line and exit 2; Ctrl-C exits 130 (SIGTERM during training: 143). Building the parser imports no torch."""

from __future__ import annotations

import argparse
import sys

from .errors import UdiffError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise UdiffError(f"{self.prog}: {message}")


def build_parser() -> Parser:
    from . import plugins
    from .commands import COMMANDS

    p = Parser(prog="udiff", description="Pluggable latent diffusion: train, sample, evaluate, "
               "export and benchmark label-conditioned image generators.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        s = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(s)
        s.set_defaults(func=command.main)
    for command in plugins.registry().commands.values():  # register_commands: guarded
        add_plugin_command(sub, command)
    return p


def add_plugin_command(sub, command) -> None:
    """A plugin's command beside the built-ins; one whose name is taken or whose arguments fail
    to build is left out with a warning, never stopping the CLI."""
    where = f"command {command.name!r} from plugin {command.plugin}"
    if command.name in sub.choices:
        print(f"udiff: warning: {where} not added: udiff has a command of that name",
              file=sys.stderr)
        return
    s = sub.add_parser(command.name, help=f"{command.help} [{command.plugin}]",
                       description=command.help)
    try:
        command.add_arguments(s)
    except Exception as e:  # noqa: BLE001 -- a plugin's bug must not stop the CLI
        del sub.choices[command.name]
        sub._choices_actions = [a for a in sub._choices_actions if a.dest != command.name]
        print(f"udiff: warning: {where} not added: {type(e).__name__}: {e}", file=sys.stderr)
        return

    def main(args) -> int:
        try:
            return command.main(args)
        except (UdiffError, KeyboardInterrupt):
            raise
        except Exception as e:  # one line, as a plugin's failing factory is
            raise UdiffError(f"{where} failed: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}") from e

    s.set_defaults(func=main)


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        args = build_parser().parse_args(argv)
        args.argv = argv
        return args.func(args)
    except UdiffError as e:
        print(f"udiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # training's Interrupted carries 143 for SIGTERM
        print("udiff: interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
