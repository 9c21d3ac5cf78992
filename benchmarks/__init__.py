"""Benchmarks for fogcoord: ``python -m benchmarks [--json] [--only PREFIX]``.

Each figure family is one module in this package, listed in :mod:`benchmarks.registry`. A module
declares the figure names it produces (``FIGURES``) and their unit (``UNIT``, or ``UNITS`` per
name), and exposes ``run()`` (sync or async) returning :class:`benchmarks.harness.Figure` rows.
This ``__init__`` stays import-free so child processes started with ``python -m
benchmarks.<script>`` pay nothing for it.
"""
