"""The ``pancreas-seg`` command line: one subcommand per pipeline stage.

Entry points: the ``pancreas-seg`` script and ``python -m pipeline.cli`` (also under ``torchrun``).
:mod:`~pipeline.cli.parser` builds the arguments, :mod:`~pipeline.cli.commands` turns them into
calls of the stage packages, :mod:`~pipeline.cli.app` runs one and reports errors in one line.
"""

from pipeline.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
