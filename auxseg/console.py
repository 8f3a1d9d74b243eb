"""What a person reads while a command runs: one line per step while it runs, one line when it is done.

A *session* (:func:`session`; every ``auxseg`` command opens one) owns the terminal. A *step*
(:func:`step`) is one piece of work the person waits for: a fine-tune, the labelling, the
pre-training. While a step runs it is one line, redrawn from what the stages report through
:func:`bar` (iterations or images done, loss, mIoU so far); everything the step prints itself
(mmengine's and mmseg's logs, warnings, the stages' own lines) goes to the step's log file, not
to the terminal. When it ends, one line gives its wall time and what it produced. Native
libraries that write to file descriptor 2 themselves (faiss's C++ warnings) are caught too.

On a terminal the running line is redrawn in place with tqdm's meter. When the output is a file
or a pipe there is no carriage return at all: the running line appears as a plain line at most
every :data:`PLAIN_INTERVAL_S` seconds, so a log of the run reads like the terminal's last screen.
``verbose=True`` (``--verbose``) leaves every step's output on the terminal, as the stages print it.

Outside a session (a library call, a test) :func:`bar` is an ordinary tqdm bar and :func:`step`
captures nothing and prints nothing, so the stages behave as they always did.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

PLAIN_INTERVAL_S = 60.0  # not a terminal: at most one progress line per step this often
TTY_REFRESH_S = 0.2  # a terminal: redraw the running line at most this often
NAME_WIDTH = 24  # the step-name column of the done lines


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 03 min``: wall times as the done lines show them."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ----------------------------------------------------------------------------- the log file of a step


class _LogSink(io.TextIOBase):
    """A text stream that stands in for stdout/stderr during a step and writes to its log file.

    The file is opened on the first write once its folder exists (a run refused before it made
    its output folder leaves no folder behind); until then the text waits in memory. After the
    step, writes are dropped: a logger that kept this stream (mmengine's keeps the ``sys.stdout``
    of the moment it was built) must not fail or leak onto the terminal later.
    """

    def __init__(self, path: Path | None, header: str) -> None:
        super().__init__()
        self.path = path
        self._file: TextIO | None = None
        self._pending: list[str] = [header]
        self._finished = False

    @property
    def encoding(self) -> str:  # some libraries ask
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def _open(self) -> None:
        if self._file is None and self.path is not None and self.path.parent.is_dir():
            # line-buffered: a forked data-loader worker inherits no half-written buffer to flush again
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (closed in finish)
            self._file.write("".join(self._pending))
            self._pending = []

    def write(self, text: str) -> int:
        if self._finished:
            return len(text)
        self._open()
        if self._file is not None:
            self._file.write(text)
        else:
            self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None and not self._finished:
            self._file.flush()

    def open_now(self) -> Path | None:
        """Open the file now if its folder exists (writing what waited); its path, or None while it cannot be."""
        self._open()
        if self._file is None:
            return None
        self._file.flush()
        return self.path

    def finish(self) -> Path | None:
        """Write what waited, close the file; returns its path if anything was written."""
        self._open()
        if self._file is not None:
            self._file.close()
        self._finished = True
        return self.path if self._file is not None else None


class _NullSink(io.TextIOBase):
    """Swallows text (mmengine's console handler while the Runner is built: the same lines go to its log file)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


# ----------------------------------------------------------------------------- bars, steps, sessions


@dataclass
class _Meter:
    """The state of one bar inside a step."""

    desc: str
    total: int | None
    n: int
    unit: str
    postfix: str = ""


class Bar:
    """What :func:`bar` returns inside a step: the tqdm calls the stages make (``update``,
    ``set_postfix``, ``set_postfix_str``, ``close``, ``with``), drawn as the step's running line."""

    def __init__(self, step: Step | None, meter: _Meter) -> None:
        self._step = step  # None: disabled, every call does nothing
        self.meter = meter

    @property
    def n(self) -> int:
        return self.meter.n

    def update(self, n: int = 1) -> None:
        if self._step is not None:
            self.meter.n += n
            self._step.changed()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in items.items()), refresh)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        if self._step is not None:
            self.meter.postfix = s
            self._step.last_postfix[self.meter.desc] = s
            if refresh:
                self._step.changed()

    def close(self) -> None:
        if self._step is not None:
            self._step.remove(self.meter)
            self._step = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Step:
    """One step of a session: its running line, its log file and the line that closes it."""

    def __init__(self, session: Session | None, name: str, log: Path | None) -> None:
        self.session, self.name, self.log = session, name, log
        self.start = time.monotonic()
        self.meters: list[_Meter] = []
        self.last_postfix: dict[str, str] = {}  # the last stats of every bar, by its description
        self.summary: str | None = None
        self.log_written: Path | None = None

    def done(self, summary: str | None) -> None:
        """Set what the closing line says after the wall time: the headline number and what was produced."""
        self.summary = summary

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def changed(self) -> None:
        if self.session is not None:
            self.session.draw(self)

    def remove(self, meter: _Meter) -> None:
        if meter in self.meters:
            self.meters.remove(meter)
            self.changed()

    def running_line(self, width: int, plain: bool) -> str:
        """The running line: the newest open bar's meter (tqdm's format), or the name and wall time."""
        meter = self.meters[-1] if self.meters else None
        prefix = self.name
        if meter is not None and meter.desc and meter.desc != self.name:
            desc = meter.desc[len(self.name):].lstrip(" :") if meter.desc.startswith(self.name) else meter.desc
            prefix = f"{self.name}: {desc}" if desc else self.name
        if meter is None:
            return f"{prefix}  running [{format_seconds(self.elapsed)}]"
        if plain or not meter.total:
            total = f"/{meter.total}" if meter.total else ""
            post = f", {meter.postfix}" if meter.postfix else ""
            return f"{prefix}: {meter.n}{total} {meter.unit} [{format_seconds(self.elapsed)}{post}]"
        from tqdm import tqdm

        return tqdm.format_meter(
            min(meter.n, meter.total), meter.total, self.elapsed, ncols=width, prefix=prefix, unit=meter.unit,
            postfix=meter.postfix or None,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}{postfix}]")


@dataclass
class Session:
    """The terminal of one command: where lines go, whether it redraws in place, verbose or not."""

    out: TextIO
    verbose: bool = False
    tty: bool = False
    current: Step | None = None
    _drawn: bool = False  # a running line is on the terminal (tty only)
    _last_draw: float = 0.0
    _last_plain: dict[int, float] = field(default_factory=dict)

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 24)).columns - 1)

    def _clear(self) -> None:
        if self._drawn:
            self.out.write("\r" + " " * self._width() + "\r")
            self._drawn = False

    def print(self, line: str) -> None:
        """One finished line on the terminal (a running line, if any, is cleared first and redrawn later)."""
        self._clear()
        self.out.write(line + "\n")
        self.out.flush()

    def draw(self, step: Step, force: bool = False) -> None:
        """Redraw the running line: in place on a terminal; as a plain line every PLAIN_INTERVAL_S otherwise."""
        if self.verbose:
            return
        now = time.monotonic()
        if self.tty:
            if not force and now - self._last_draw < TTY_REFRESH_S:
                return
            width = self._width()
            line = step.running_line(width, plain=False)[:width]
            self.out.write("\r" + line.ljust(width))
            self.out.flush()
            self._drawn, self._last_draw = True, now
        else:
            last = self._last_plain.setdefault(id(step), step.start)
            if now - last >= PLAIN_INTERVAL_S:
                self._last_plain[id(step)] = now
                self.print("  " + step.running_line(0, plain=True))

    def finish(self, step: Step, failed: bool) -> None:
        self._last_plain.pop(id(step), None)
        if failed:
            where = f"; its output is in {step.log_written}" if step.log_written else ""
            self.print(done_line(step.name, step.elapsed, f"failed{where}"))
        else:
            self.print(done_line(step.name, step.elapsed, step.summary or "done"))


def done_line(name: str, seconds: float | None, text: str) -> str:
    """``name  wall time  text``: the line that closes a step (the text last, so it can end with a path)."""
    took = format_seconds(seconds) if seconds is not None else ""
    return f"{name:<{NAME_WIDTH}} {took:>10}  {text}"


_SESSION: Session | None = None


def current() -> Session | None:
    """The open session, if any."""
    return _SESSION


def in_step() -> bool:
    """Whether a step of a session is running (progress reported through :func:`bar` reaches a person)."""
    return _SESSION is not None and _SESSION.current is not None


def quiet() -> bool:
    """Whether a step is running whose output goes to its log file rather than to the terminal."""
    return in_step() and not _SESSION.verbose


@contextlib.contextmanager
def session(verbose: bool = False, out: TextIO | None = None) -> Iterator[Session]:
    """Open the terminal's session for one command (nested calls reuse the open one)."""
    global _SESSION
    if _SESSION is not None:
        yield _SESSION
        return
    out = out or sys.stdout
    tty = bool(getattr(out, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
    _SESSION = Session(out=out, verbose=verbose, tty=tty)
    try:
        yield _SESSION
    finally:
        _SESSION._clear()
        _SESSION = None


def say(line: str) -> None:
    """A line for the person: on the session's terminal (clearing the running line), else plain stdout."""
    if _SESSION is not None:
        _SESSION.print(line)
    else:
        print(line)


@contextlib.contextmanager
def step(name: str, log: str | Path | None = None) -> Iterator[Step]:
    """Run the body as one step of the open session; call ``.done(text)`` on what it yields to set the
    closing line (wall time, then ``text``).

    ``log``: the file that receives everything the step prints (appended; a header line marks each
    run). Verbose sessions print it to the terminal instead. Outside a session, or inside another
    step, nothing is captured or printed.
    """
    s = _SESSION
    if s is None or s.current is not None:
        yield Step(None, name, None)
        return
    st = Step(s, name, Path(log) if log is not None else None)
    s.current = st
    sink = None
    if s.verbose:
        s.print(f"{name}: running" + (f" (output also in {st.log.parent})" if st.log else ""))
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sink = _LogSink(st.log, f"\n==== {stamp} {name} (auxseg; `--verbose` prints this on the terminal) ====\n")
        s.draw(st, force=True)
    failed = True
    try:
        if sink is not None:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _native_stderr_to(sink):
                yield st
        else:
            yield st
        failed = False
    finally:
        if sink is not None:
            st.log_written = sink.finish()
        s.current = None
        s.finish(st, failed)


@contextlib.contextmanager
def _native_stderr_to(sink: _LogSink) -> Iterator[None]:
    """Point file descriptor 2 at the step's log for the body.

    C and C++ code (faiss: "WARNING clustering N points to K centroids") and child processes
    write to descriptor 2 directly, past ``sys.stderr``. Where the log's folder exists when the
    step starts (it usually does: the stage command made it), descriptor 2 is the log file itself,
    opened for appending, so what native code writes is on disk at once, even when the process
    then dies (a segfault report, a fatal error). Otherwise it is an unnamed temporary file whose
    text is appended to the log when the step ends (a hard crash loses it). Not a pipe: a pipe
    needs a reader thread, and a native writer that holds the GIL would block on a full pipe.
    Descriptor 1 is left alone: the session draws on it.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a daemon): nothing to catch
        yield
        return
    log = sink.open_now()
    with contextlib.ExitStack() as stack:
        if log is not None:
            target, captured = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), None
            stack.callback(os.close, target)
        else:
            captured = stack.enter_context(tempfile.TemporaryFile())
            target = captured.fileno()
        sys.__stderr__ and sys.__stderr__.flush()
        os.dup2(target, 2)
        try:
            yield
        finally:
            sys.__stderr__ and sys.__stderr__.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if captured is not None:
                captured.seek(0)
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                while chunk := captured.read(1 << 20):
                    sink.write(decoder.decode(chunk))
                sink.write(decoder.decode(b"", final=True))


def bar(total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
        disable: bool = False) -> Any:
    """A progress bar for a stage: the running line of the current step, else a plain tqdm bar.

    Takes the tqdm arguments the stages use; a disabled bar does nothing. In a verbose session the
    stages' own tqdm bars are kept, as they always looked.
    """
    s = _SESSION
    if s is None or s.current is None or s.verbose:
        from tqdm import tqdm

        return tqdm(None, total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
    meter = _Meter(desc=desc, total=total, n=initial, unit=unit)
    if disable:
        return Bar(None, meter)
    s.current.meters.append(meter)
    s.current.changed()
    return Bar(s.current, meter)


def iterate(items: Iterable[Any], *, desc: str = "", unit: str = "it", disable: bool = False) -> Iterator[Any]:
    """``for item in iterate(items, desc=...)``: the items, counted on a :func:`bar`."""
    items = list(items)
    with bar(total=len(items), desc=desc, unit=unit, disable=disable) as b:
        for item in items:
            yield item
            b.update(1)


@contextlib.contextmanager
def muted_stdout() -> Iterator[None]:
    """In a quiet step, send stdout nowhere for the body (e.g. while mmengine's Runner logs its environment
    and its whole config as it is built: both are in its own log file). Elsewhere a no-op."""
    if not quiet():
        yield
        return
    with contextlib.redirect_stdout(_NullSink()):
        yield


def quiet_console_handlers(logger: logging.Logger) -> None:
    """In a quiet step, stop a logger's console handlers (its file handlers keep everything). Elsewhere a no-op."""
    if not quiet():
        return
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL + 1)
