"""One module per CLI command. Each holds ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``main(args) -> int``, and imports nothing heavy at module level: ``udiff --help`` builds every
parser without torch."""

from . import (
               bench,
               compare,
               data,
               demo,
               distill,
               evaluate,
               export,
               info,
               keys,
               plugins,
               sample,
               serve,
               studio,
               train,
)

COMMANDS = (plugins, data, train, distill, info, sample, evaluate, export, serve, keys, bench,
            compare, studio, demo)
