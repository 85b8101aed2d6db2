"""The ``pancreas-seg`` command: one entry point, one subcommand per pipeline stage.

User errors (bad files, bad manifests, bad config) end with one line on stderr naming the file
and the problem, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from pipeline.cli.parser import build_parser
from pipeline.core.errors import PipelineError

__all__ = ["build_parser", "main"]

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
# Subcommands that split their work across the processes of a torchrun job.
TORCHRUN_COMMANDS = frozenset({"train", "cv", "compare", "infer"})


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(message)s", force=True)
    if not debug:
        # Library chatter (MONAI deprecations, ignite) hides what the user needs to read.
        warnings.filterwarnings("ignore")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
        for name in ("ignite", "monai", "matplotlib", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # ignite's engines log every exception before re-raising it; the CLI reports it in one line.
        logging.getLogger("ignite.engine").setLevel(logging.CRITICAL)
        # MONAI warns at every reader construction when pydicom is installed without nvImageCodec.
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _run(args: argparse.Namespace) -> int:
    """Run the subcommand; under torchrun only those that know how to share the work."""
    from pipeline.core import distributed
    from pipeline.core.errors import UsageError

    if distributed.launched() and args.command not in TORCHRUN_COMMANDS:
        raise UsageError(
            f"pancreas-seg {args.command} runs as one process; under torchrun use one of "
            f"{', '.join(sorted(TORCHRUN_COMMANDS))}"
        )
    try:
        return int(args.func(args) or 0)
    finally:
        distributed.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pancreas-seg``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug)
    try:
        return _run(args)
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"pancreas-seg: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"pancreas-seg: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("pancreas-seg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, never a traceback
        if args.debug:
            raise
        from pipeline.core import distributed

        if (lost := distributed.describe_failure(exc)) is not None:
            print(f"pancreas-seg: {lost}", file=sys.stderr)
            return EXIT_INTERNAL_ERROR
        print(
            f"pancreas-seg: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(re-run with --debug for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
