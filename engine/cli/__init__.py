"""The ``isodose`` command line: the parser and entry points in :mod:`.main`, shared options in :mod:`.options`,
and one module per command (``dvh``, ``audit``, ``classify``, ``accumulate``, ``cohort``, ``validate``, ``demo``,
``phantom``, ``backends``), each with ``add_parser`` and ``run``.

>>> from isodose.cli import main
>>> main(["backends"])  # doctest: +SKIP
"""

from __future__ import annotations

from .main import console, main

#: The console script's entry point (``isodose = isodose.cli:run`` in pyproject.toml).
run = console

__all__ = ["console", "main", "run"]
