"""The progress bar of ``cohort run`` and ``demo`` (what the command line draws of a run's progress callback),
and the summary printed when a run ends."""

from __future__ import annotations

import sys
import time

from ..formatting import terminal_safe


class ProgressBar:
    """A one-line progress report on a stream (stderr): rewritten in place on a terminal, every 10% otherwise.

    Called with each :class:`isodose.cohort.runner.RunProgress`; :meth:`finish` ends its line.
    """

    WIDTH = 24

    def __init__(self, stream=None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._last_decile = -1
        self._drawn = False

    def __call__(self, progress) -> None:
        if not self.enabled or progress.total <= 0 or progress.done == progress.skipped:
            return
        now = time.perf_counter()
        decile = int(10 * progress.done / progress.total)
        if (
            (self.tty and now - self._last > 0.2)
            or (not self.tty and decile != self._last_decile)
            or progress.done == progress.total
        ):
            self._last, self._last_decile = now, decile
            self._write(progress)

    def _write(self, progress) -> None:
        filled = int(self.WIDTH * progress.done / progress.total)
        remaining = progress.remaining_s
        eta = f"{int(remaining // 60)}:{int(remaining % 60):02d}" if remaining is not None else "-"
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {progress.done}/{progress.total} cases, "
            f"{progress.failed} failed, {progress.rate_per_s:.1f} cases/s, ETA {eta}"
        )
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn and self.tty:
            self.stream.write("\n")
            self.stream.flush()


#: Case ids shown per reason in the summary of failures.
FAILED_IDS_SHOWN = 5


def print_summary(summary) -> None:
    rate = f" ({summary.processed / summary.seconds:.1f} cases/s)" if summary.processed and summary.seconds > 0 else ""
    print(
        f"{summary.cases} case{'' if summary.cases == 1 else 's'}: {summary.processed} processed ({summary.failed} "
        f"failed), {summary.skipped} already done; {summary.seconds:.1f} s{rate}"
    )
    print(f"results: {summary.store}; table: {summary.table}")
    if summary.with_warnings:
        print(
            f"{summary.with_warnings} of the cases processed {'has' if summary.with_warnings == 1 else 'have'} "
            "warnings: each case's are in the store and in the table's warnings column"
        )
    if summary.failures:
        print(f"failed cases, by reason ({summary.failed} in all; each case's error is in the store and the table):")
        for reason, ids in summary.failures.items():
            shown = ", ".join(ids[:FAILED_IDS_SHOWN]) + (
                f", and {len(ids) - FAILED_IDS_SHOWN} more" if len(ids) > FAILED_IDS_SHOWN else ""
            )
            label = "case" if len(ids) == 1 else "cases"
            print(f"  {len(ids)} x {terminal_safe(reason)} ({label} {terminal_safe(shown)})")
            first = summary.first_errors.get(reason)
            if first:  # the paths the reason shortened, as the first of these cases gave them
                print(f"    the first, {terminal_safe(ids[0])}: {terminal_safe(first)}")
