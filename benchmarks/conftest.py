"""`pytest benchmarks/` runs the host's benchmark suite with its options (--udiff-quick, ...)."""

from udiff.bench.plugin import *  # noqa: F401,F403  (options, parametrisation, fixtures)
