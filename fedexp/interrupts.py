"""Ctrl-C and SIGTERM stop a run the same way, with the results so far kept.

Python turns SIGINT into KeyboardInterrupt, but SIGTERM (what `kill`, schedulers and
container runtimes send) would end the process on the spot, skipping every `finally`:
Ray would be left running and results.json would stay at `status: "running"`. Within
`signals_as_interrupts` both signals raise `Interrupted` (a KeyboardInterrupt) in the
main thread, so the same code paths save the results and shut Ray down.

While Flower's simulation engine runs, raising at once is not safe: the exception
leaves Flower's worker threads inside `ray.get`, and Flower's own cleanup then shuts Ray
down under them, which makes Ray end the whole process (exit 1 or a segfault) before
anything is saved. `deferred_interrupts` therefore only asks the engine to stop
(`on_signal`) and raises `Interrupted` once it has returned, a few seconds later. A
third signal raises at once, as a last resort.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []  # signals seen since the outermost block began


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; `exit_code` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _note(signum: int, what: str) -> None:
    print(f"fedexp: {signal.Signals(signum).name}: {what}", file=sys.stderr, flush=True)


@contextmanager
def _handlers(handler):
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def signals_as_interrupts():
    """The first SIGINT/SIGTERM raises `Interrupted`; later ones are ignored, so that a
    second Ctrl-C cannot cut the cleanup short. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _received.append(signum)
        if len(_received) > 1:
            _note(signum, "already stopping (saving results, shutting Ray down)")
            return
        raise Interrupted(signum)

    _received.clear()
    with _handlers(handler):
        yield


@contextmanager
def deferred_interrupts(on_signal):
    """Within the block, the first SIGINT/SIGTERM calls `on_signal(signum)`, which must
    make the block end soon, and `Interrupted` is raised when it has; a third signal
    raises at once. No-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    start = len(_received)

    def handler(signum, frame):
        _received.append(signum)
        seen = len(_received) - start
        if seen == 1:
            on_signal(signum)
        elif seen == 2:
            _note(signum, "stopping the simulation (a few seconds); once more aborts at once")
        else:
            raise Interrupted(signum)

    with _handlers(handler):
        try:
            yield
        except Exception:
            if len(_received) > start:  # the engine's way of stopping: report the signal
                raise Interrupted(_received[start]) from None
            raise
    if len(_received) > start:
        raise Interrupted(_received[start])
