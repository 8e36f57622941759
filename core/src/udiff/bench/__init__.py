"""The benchmark harness: every installed backbone on speed, memory and quality, side by side.

``udiff bench`` runs :mod:`udiff.bench.suite` under pytest-benchmark and turns its JSON into
``report.md``, ``report.png`` and ``ratios.json`` (:mod:`udiff.bench.report`). A plugin's own
repository runs the same suite with ``pytest -p udiff.bench.plugin --pyargs udiff.bench.suite``.
"""
