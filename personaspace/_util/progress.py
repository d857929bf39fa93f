"""One home for progress display, shared by the Python API and the ``personaspace`` command.

A :class:`Progress` is a set of named bars ("stages": ``generate``, ``judge``, ``cells``, ``steps`` ...),
each driven by ``update(stage, done, total)``. Where it draws is decided once, when it is made:

* in Jupyter (an IPython kernel): ``tqdm.auto`` bars (widgets when ipywidgets is installed, text otherwise);
* when stderr is a terminal: rich bars on stderr (stdout stays clean for tables and pipes);
* otherwise (CI logs, pipes, pytest): nothing at all.

``progress=True``/``False`` (the argument of the API functions) forces it on or off; without one, the
environment variable ``PERSONASPACE_PROGRESS=1``/``0`` does; without either, the rules above decide. The
API functions open their display with :func:`progress_scope`: a call inside another one (an extraction
inside the EM experiment) draws its bars in the display already open, and removes them when it ends.

Progress only reports: it never changes what a function computes.

>>> with Progress(False) as bars:
...     for _ in bars.track(range(3), "steps"):
...         pass
>>> bars.enabled
False

:func:`quiet_loading` silences what libraries print while a model loads (transformers' per-file bars,
its notices and deprecation warnings), for the duration of the load only; ``PERSONASPACE_DEBUG=1`` keeps it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, Union

ENV = "PERSONASPACE_PROGRESS"
DEBUG_ENV = "PERSONASPACE_DEBUG"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")

T = TypeVar("T")

_ACTIVE: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("personaspace_progress", default=None)


def env_setting() -> bool | None:
    """``PERSONASPACE_PROGRESS``: True (1/true/yes/on), False (0/false/no/off), None (unset or anything else)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    return None


def debug_enabled() -> bool:
    """``PERSONASPACE_DEBUG`` is set to something other than 0/false/no/off."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", *_OFF)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython running under an IPKernelApp), as tqdm.auto decides it."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()  # type: ignore[attr-defined]
        return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    except Exception:  # pragma: no cover - an unusual IPython
        return False


def choose_mode(enabled: bool | None = None, console: Any = None) -> str | None:
    """Where a display draws: ``"notebook"``, ``"rich"`` or None (nowhere).

    ``enabled`` (the ``progress=`` argument) wins over ``PERSONASPACE_PROGRESS``, which wins over the
    automatic choice: a notebook, else a terminal on stderr (or on ``console``, a rich Console, if given).
    """
    wanted = enabled if enabled is not None else env_setting()
    if wanted is False:
        return None
    if in_notebook():
        return "notebook"
    if wanted is True:
        return "rich"
    if console is not None:
        return "rich" if console.is_terminal and not console.is_dumb_terminal else None
    return "rich" if _isatty(sys.stderr) else None  # a replaced or closed stderr counts as no terminal


class Progress:
    """Named progress bars drawn with rich (terminal), tqdm.auto (Jupyter) or not at all.

    ``enabled``: True/False forces the display on/off; None decides as :func:`choose_mode` says.
    ``console``: the rich Console to draw on (default: a new one on stderr). ``echo``: where
    :meth:`log` lines go when the display is off (default: nowhere; the CLI prints them). Use it as a
    context manager; ``update``/``advance``/``track`` are no-ops when the display is off.
    """

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        console: Any = None,
        echo: Callable[[str], Any] | None = None,
    ):
        self.mode = choose_mode(enabled, console)
        self._console = console
        self._echo = echo
        self._display: Any = None  # rich.progress.Progress, or None for tqdm and off
        self._stages: dict[str, Any] = {}  # stage -> rich task id or tqdm bar
        self._depth = 0
        self._token: contextvars.Token | None = None

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    @property
    def stages(self) -> list[str]:
        """The stages drawn now, in the order they were opened."""
        return list(self._stages)

    def __enter__(self) -> Progress:
        self._depth += 1
        if self._depth == 1:
            if self.mode == "rich":
                self._display = _rich_display(self._console)
                self._display.start()
            self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for stage in list(self._stages):
            if self.mode == "notebook":
                self._stages.pop(stage).close()
        self._stages.clear()
        if self._display is not None:
            self._display.stop()
            self._display = None
        if self._token is not None:
            try:
                _ACTIVE.reset(self._token)
            except ValueError:  # left in another context (e.g. a generator closed elsewhere)
                _ACTIVE.set(None)
            self._token = None

    # ---- reporting ----------------------------------------------------------------------------

    def update(self, stage: str, done: int, total: int | None = None, *, note: str | None = None) -> None:
        """Set ``stage`` to ``done`` of ``total`` (None: unknown), opening its bar on first use."""
        if self.mode is None:
            return
        if self.mode == "rich":
            if self._display is None:  # used without ``with``: draw nothing rather than a stray display
                return
            if stage not in self._stages:
                self._stages[stage] = self._display.add_task(stage, total=total, note="")
            fields = {"note": note} if note is not None else {}
            finished = total is not None and done >= total  # drawn at once: the bar may be removed next
            self._display.update(self._stages[stage], completed=done, total=total, refresh=finished, **fields)
            return
        bar = self._stages.get(stage)
        if bar is None:
            bar = self._stages[stage] = _tqdm_bar(stage, total)
        if total is not None and bar.total != total:
            bar.reset(total=total)
        if done >= bar.n:
            bar.update(done - bar.n)
        else:
            bar.n = done
            bar.refresh()
        if note is not None:
            bar.set_postfix_str(note, refresh=True)

    def advance(self, stage: str, n: int = 1, *, total: int | None = None, note: str | None = None) -> None:
        """Move ``stage`` on by ``n`` (its total may be given on the first call)."""
        if self.mode is None:
            return
        self.update(stage, self.done(stage) + n, total if total is not None else self.total(stage), note=note)

    def done(self, stage: str) -> int:
        """How far ``stage`` is (0 if it is not open)."""
        handle = self._stages.get(stage)
        if handle is None:
            return 0
        if self.mode == "rich":
            return int(self._display.tasks[self._index(handle)].completed) if self._display is not None else 0
        return int(handle.n)

    def total(self, stage: str) -> int | None:
        handle = self._stages.get(stage)
        if handle is None:
            return None
        if self.mode == "rich":
            value = self._display.tasks[self._index(handle)].total if self._display is not None else None
        else:
            value = handle.total
        return None if value is None else int(value)

    def _index(self, task_id: Any) -> int:
        return next(i for i, t in enumerate(self._display.tasks) if t.id == task_id)

    def close(self, stage: str) -> None:
        """Remove the bar of ``stage`` (a finished part of a longer run)."""
        handle = self._stages.pop(stage, None)
        if handle is None:
            return
        if self.mode == "rich":
            if self._display is not None:
                self._display.remove_task(handle)
        else:
            handle.leave = False  # a finished part: its bar goes (the last ones stay when the display closes)
            handle.close()

    def track(self, iterable: Iterable[T], stage: str, total: int | None = None) -> Iterator[T]:
        """Yield from ``iterable``, advancing ``stage`` by one per item (``total`` defaults to ``len``)."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.update(stage, 0, total)
        for k, item in enumerate(iterable, start=1):
            yield item
            self.update(stage, k, total)

    def log(self, message: str) -> None:
        """A line above the bars; to ``echo`` (if given) when the display is off."""
        if self.mode == "rich" and self._display is not None:
            self._display.console.print(message, markup=False, highlight=False)
        elif self.mode == "notebook":
            from tqdm.auto import tqdm

            tqdm.write(message, file=sys.stderr)
        elif self._echo is not None:
            self._echo(message)


ProgressArg = Union[bool, None, Progress, Callable[..., Any]]


def callback(progress: ProgressArg) -> Callable[..., Any] | None:
    """The caller's own progress function, when ``progress`` is one (the older callback form)."""
    if progress is None or isinstance(progress, (bool, Progress)) or not callable(progress):
        return None
    return progress


@contextlib.contextmanager
def progress_scope(progress: ProgressArg = None) -> Iterator[Progress]:
    """The display an API function reports to, from its ``progress=`` argument.

    * a :class:`Progress`: that one (e.g. the CLI's);
    * None (or True) inside another function's display: that display; the stages opened here are removed
      at the end;
    * None, True or False otherwise: a new display, on, off or decided by :func:`choose_mode`;
    * a function (the older callback form): no display; the caller calls its function itself.
    """
    if isinstance(progress, Progress):
        with progress:
            yield progress
        return
    active = _ACTIVE.get()
    if active is not None and (progress is None or progress is True and active.enabled):  # one live display at a time
        before = set(active.stages)
        try:
            yield active
        finally:
            for stage in active.stages:
                if stage not in before:
                    active.close(stage)
        return
    with Progress(None if progress is None else bool(progress) and callback(progress) is None) as bars:
        yield bars


def track(iterable: Iterable[T], stage: str, progress: ProgressArg = None, total: int | None = None) -> Iterator[T]:
    """``for item in track(items, "cells", progress)``: the loop of an API function, with a bar.

    The display is opened as :func:`progress_scope` says (so a function's ``progress=`` argument can be
    passed straight through) and closed when the loop ends.
    """
    with progress_scope(progress) as bars:
        yield from bars.track(iterable, stage, total)


def _rich_display(console: Any) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress
    from rich.table import Column

    console = console if console is not None else Console(stderr=True)
    return RichProgress(
        TextColumn("{task.description:>10}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True, overflow="ellipsis")),
        console=console,
        transient=False,
        # stdout printed while the bars draw moves above them only when stdout is the same terminal;
        # a piped stdout keeps what is written to it
        redirect_stdout=_isatty(sys.stdout) and console.is_terminal,
        redirect_stderr=console.is_terminal,
    )


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        return False


def _tqdm_bar(stage: str, total: int | None) -> Any:
    with warnings.catch_warnings():  # tqdm.auto warns once when ipywidgets is missing; text bars then
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm(total=total, desc=stage, leave=True, dynamic_ncols=True)


# ---- library output while a model loads ---------------------------------------------------------

# Loggers that talk while weights load: transformers' own (set through its logging utilities) and the
# optional torchao extension that transformers imports to check for quantised weights.
_LOADING_LOGGERS = ("torchao", "torch.utils._pytree")


def silence_libraries() -> None:
    """For a whole CLI command: turn transformers' per-file bars and notices off for good (our own
    bars are enough), unless ``PERSONASPACE_DEBUG=1``. The Python API uses :func:`quiet_loading`, which
    restores them after each load."""
    if debug_enabled():
        return
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence library output while a model loads, and restore it afterwards.

    transformers' per-file "Loading weights" bars and its info/warning notices (through
    ``transformers.utils.logging``), FutureWarning and DeprecationWarning raised during the load (a
    scoped ``warnings.catch_warnings``, not a global filter) and the notices of optional extensions
    imported on the way. With ``PERSONASPACE_DEBUG=1`` nothing is silenced.
    """
    if debug_enabled():
        yield
        return
    hf_logging: Any = None
    with contextlib.suppress(ImportError):
        import transformers.utils.logging

        hf_logging = transformers.utils.logging
    saved_verbosity = hf_logging.get_verbosity() if hf_logging is not None else None
    bars_on = hf_logging.is_progress_bar_enabled() if hf_logging is not None else False
    levels = {name: logging.getLogger(name).level for name in _LOADING_LOGGERS}
    try:
        if hf_logging is not None:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        for name in _LOADING_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if hf_logging is not None:
            hf_logging.set_verbosity(saved_verbosity)
            if bars_on:
                hf_logging.enable_progress_bar()
