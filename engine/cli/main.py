"""The parser of the ``isodose`` command and its entry points.

Every user error is one line on stderr, ``isodose: error: <file>: <object>: <problem>``, and exit status 2;
unexpected failures are one line too (exit 3) unless ``--debug`` asks for the traceback; Ctrl-C exits with 130.
Each command lives in a module of its own (``add_parser`` and ``run``), which imports what it computes with only
when it runs, so that the command starts fast.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__
from ..errors import IsodoseError, shown_on_terminal
from . import accumulate, audit, backends, classify, cohort, demo, dvh, phantom, validate
from .exit_codes import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNWRITTEN_OUTPUT, EXIT_USER_ERROR

#: The command modules, in the order ``isodose --help`` lists them.
COMMANDS = (dvh, audit, validate, accumulate, classify, cohort, demo, phantom, backends)


class _Parser(argparse.ArgumentParser):
    """argparse's parser with usage errors on one line, as every other error of the command line: the problem and
    where to read more, not the usage block (the commands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="isodose", description="Dose-volume engine for radiotherapy research.")
    parser.add_argument("--version", action="version", version=f"isodose {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for command in COMMANDS:
        command.add_parser(commands)
    for leaf in _leaves(parser):
        _add_common(leaf)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    """``-v``, ``-q`` and ``--debug`` after the command too (``isodose dvh ... -q``); given there, they win."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (repeat for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors on stderr")
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of unexpected errors"
    )


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the commands (and of their actions: ``cohort run``, ``validate nelms``)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _leaves(sub) or [sub]
    return found


def configure_logging(verbose: int, quiet: bool) -> None:
    """The ``isodose`` logger's messages on stderr, as ``isodose: LEVEL: message``. ``quiet`` hides warnings on the
    terminal only: the logger still passes them on (at least WARNING, here and in worker processes), so that they
    are kept with the results they concern, in every output and store."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("isodose: %(levelname)s: %(message)s"))
    handler.setLevel(level)
    handler.addFilter(shown_on_terminal)  # a cohort's cases' warnings go with their results, not here
    root = logging.getLogger("isodose")
    root.handlers[:] = [handler]
    root.setLevel(min(level, logging.WARNING))
    root.propagate = False


def one_line(error: BaseException) -> str:
    """An error's message on one line (messages of libraries underneath, h5py's say, may hold line breaks)."""
    return " ".join(str(error).split())


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the command is, so that it stops as on Ctrl-C: finished cases kept, worker
    processes stopped."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` in the console command."""
    import signal

    def stop(signum, frame):
        raise Stopped(signum)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: this process's arguments) and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("-q (only errors) and -v (more output) contradict each other: give one")
    configure_logging(args.verbose, args.quiet)
    try:
        return args.func(args)
    except IsodoseError as exc:
        print(f"isodose: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Stopped as exc:
        import signal

        hint = getattr(args, "on_interrupt", None)
        print(f"isodose: stopped by {signal.Signals(exc.signum).name}{f'; {hint}' if hint else ''}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        hint = getattr(args, "on_interrupt", None)
        print(f"isodose: interrupted{f'; {hint}' if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into head, say
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"isodose: internal error: {type(exc).__name__}: {one_line(exc)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


#: First-generation threshold of the garbage collector in the console command (Python's default is 700).
CONSOLE_GC_THRESHOLD = 50_000


def console() -> None:
    """The console command: :func:`main` in a process that ends when it returns.

    Loading Numba's compiled kernels leaves some hundreds of thousands of long-lived objects (its typing and
    lowering registries). The collector's default thresholds walk them again and again during the run, and
    the interpreter's last collection walks them once more at exit: about a quarter of a one-case command's
    wall time. The command therefore collects less often, and ends its process without the interpreter's teardown
    (:func:`leave`); every file it wrote is closed by then. Numba's CPU target, where the command loads it, is set
    up for loading cached kernels, without SciPy's BLAS (:func:`isodose.dispatch.for_one_command`). :func:`main`,
    for embedding, changes none of these.
    """
    from .. import dispatch  # here, not at the top: --help and --version import no NumPy

    dispatch.for_one_command()
    gc.set_threshold(CONSOLE_GC_THRESHOLD)
    stop_on_signals()
    try:
        code = main()
    finally:
        gc.freeze()
    leave(code)


def leave(code: int) -> NoReturn:
    """End the console command's process with ``code`` as ``sys.exit`` would, less the interpreter's teardown of
    every module and object, which nothing of the command needs (tens of milliseconds once Numba is loaded).
    What the interpreter does first is done here too, in its order: threads left running are waited for (and
    ``concurrent.futures``' pools shut down), the exit handlers run (logging's, multiprocessing's, h5py's), and
    stdout and stderr are flushed. Output that cannot be written (a full disk) is an error, as it is at the
    interpreter's exit, said on stderr (status 120, as Python's); a closed pipe (output piped into ``head``) or a
    closed stream is not. C libraries' own exit handlers do not run (HDF5's closing of files left open among them):
    every file the command writes is closed by the time it returns."""
    import atexit
    import os
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # CPython's own step before the exit handlers
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed when the process started (``>&-``)
            continue
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # output piped into head, say (what was wanted was written), or closed
            pass
        except OSError as exc:
            if stream is sys.stdout:
                try:
                    print(f"isodose: error: the output could not be written ({exc.strerror or exc})", file=sys.stderr)
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                code = code or EXIT_UNWRITTEN_OUTPUT
    os._exit(code)
