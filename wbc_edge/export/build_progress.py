"""A one-line progress display for TensorRT engine builds, which take from
seconds to many minutes.

With TensorRT's ``IProgressMonitor`` (10.0 and later) the line shows the
builder's own phases and steps; without it, a ticker shows the elapsed time.
On a terminal the line is redrawn in place; in a log, each top-level phase is
printed once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TextIO


class ProgressLine:
    """One status line, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO, prefix: str = "building engine"):
        self.stream = stream
        self.prefix = prefix
        self.start = time.monotonic()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._width = 0
        self._lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def update(self, text: str, force: bool = False) -> None:
        """Redraws the line (terminal); in a log, ``force`` prints it."""
        with self._lock:
            now = time.monotonic()
            line = f"{self.prefix}: {text} ({self.elapsed():.0f} s)"
            if self.tty:
                if not force and now - self._last_draw < 0.1:
                    return
                self.stream.write("\r" + line.ljust(self._width))
                self._width = len(line)
            elif force:
                self.stream.write(line + "\n")
            else:
                return
            self._last_draw = now
            self.stream.flush()

    def finish(self, text: str) -> None:
        with self._lock:
            line = f"{self.prefix}: {text}"
            self.stream.write(("\r" + line.ljust(self._width) if self.tty else line) + "\n")
            self.stream.flush()


def make_monitor(trt, line: ProgressLine):
    """A ``trt.IProgressMonitor`` drawing the builder's phases on ``line``.

    TensorRT calls it from its own threads, so every callback takes a lock,
    and none may raise (an exception cannot cross back into TensorRT). Ctrl-C
    arrives in a callback (the only Python code running during a build): it is
    caught there, cancels the build (``step_complete`` answers False), and is
    raised again once the build has returned (``interrupted``).
    """

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)  # pybind11 needs the base initialised explicitly
            self._phases: dict[str, list] = {}  # name -> [step, steps, parent]
            self._lock = threading.Lock()
            self.cancelled = False
            self.interrupted = False

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                with self._lock:
                    self._phases[phase_name] = [0, max(int(num_steps), 1), parent_phase]
                    self._draw(force=parent_phase is None)
            except KeyboardInterrupt:
                self._interrupt()

        def step_complete(self, phase_name, step):
            try:
                with self._lock:
                    if phase_name in self._phases:
                        self._phases[phase_name][0] = int(step) + 1
                    self._draw()
            except KeyboardInterrupt:
                self._interrupt()
            return not self.cancelled  # False asks TensorRT to stop the build

        def phase_finish(self, phase_name):
            try:
                with self._lock:
                    self._phases.pop(phase_name, None)
                    self._draw()
            except KeyboardInterrupt:
                self._interrupt()

        def _interrupt(self):
            self.cancelled = self.interrupted = True

        def _draw(self, force: bool = False):
            try:
                parts = [f"{name} {step}/{steps}" for name, (step, steps, _) in self._phases.items()]
                line.update(" > ".join(parts[-3:]) or "working", force=force)
            except Exception:  # a broken pipe must not break the build
                pass

    return Monitor()


@contextlib.contextmanager
def build_progress(trt, config, stream: TextIO | None):
    """Shows progress while the body builds with ``config``; yields the line (or None)."""
    if stream is None:
        yield None
        return
    line = ProgressLine(stream)
    if hasattr(trt, "IProgressMonitor") and hasattr(type(config), "progress_monitor"):
        monitor = make_monitor(trt, line)
        config.progress_monitor = monitor  # must outlive the build: it is kept alive by this frame
        try:
            yield line
        finally:
            try:
                config.progress_monitor = None
            except TypeError:  # a binding that does not take None: the monitor simply stays attached
                pass
        if monitor.interrupted:  # Ctrl-C during the build: TensorRT stopped; now the user's interrupt
            raise KeyboardInterrupt
        return
    stop = threading.Event()  # TensorRT before 10.0: an elapsed-time ticker

    def tick():
        while not stop.wait(1.0 if line.tty else 30.0):
            line.update("optimizing", force=True)

    ticker = threading.Thread(target=tick, name="engine-build-ticker", daemon=True)
    ticker.start()
    try:
        yield line
    finally:
        stop.set()
        ticker.join()
