"""Sweeps over trained runs, each scored by ``udiff eval``'s judge: ``udiff bench guidance``
(guidance scale x interval, :mod:`.guidance`) and ``udiff bench distill`` (students against their
teachers, :mod:`.distill`); their tables and pictures (:mod:`.tables`). No pytest."""
