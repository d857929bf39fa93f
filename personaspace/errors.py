"""Errors a user can cause, each with one clear message and a documentation page.

Every class names a page of ``personaspace/docs/errors/`` (shipped with the package, so the pointer
works outside a checkout): ``personaspace explain PAGE`` prints it. The CLI prints the message and
that pointer on one line, never a traceback, and exits with code 2 (see ``docs/errors/index.md``).
"""

from __future__ import annotations

from pathlib import Path

ERROR_PAGES = Path(__file__).resolve().parent / "docs" / "errors"


class PersonaspaceError(Exception):
    """Base class of every error personaspace raises on purpose."""

    doc: str = "index"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def doc_path(self) -> str:
        """The page's path inside the installed package (readable without a checkout)."""
        return str(ERROR_PAGES / f"{self.doc}.md")

    @property
    def pointer(self) -> str:
        """The command that prints this error's page."""
        return f"personaspace explain {self.doc}"

    def __str__(self) -> str:
        return f"{self.message} (details: {self.pointer})"


class UnknownModelError(PersonaspaceError):
    """A model name that is neither embedded, a local directory, nor reachable on a hub."""

    doc = "unknown-model"


class ModelNotInstalledError(PersonaspaceError):
    """An embedded model whose weight package is not installed."""

    doc = "model-not-installed"


class LayerOutOfRangeError(PersonaspaceError, IndexError):
    doc = "layer-out-of-range"


class VectorShapeError(PersonaspaceError, ValueError):
    """A vector whose width or layer count does not fit the model or the other vectors."""

    doc = "vector-shape"


class CorruptFileError(PersonaspaceError):
    """A vector, cache or run file that cannot be read back."""

    doc = "corrupt-file"


class UnknownTraitError(PersonaspaceError, KeyError):
    doc = "unknown-trait"


class TraitFileError(PersonaspaceError, ValueError):
    """A trait YAML file that does not parse or does not pass validation."""

    doc = "trait-file"


class JudgeUnavailableError(PersonaspaceError):
    """A judge endpoint that cannot be reached or keeps failing after retries."""

    doc = "judge-unavailable"


class JudgeTooWeakError(JudgeUnavailableError):
    """A local judge model that puts too little probability on numbers to score anything (too small a model)."""

    doc = "judge-too-weak"


class JudgeResponseError(PersonaspaceError):
    """A judge that answers, but with something that cannot be turned into a score."""

    doc = "judge-response"


class DatasetError(PersonaspaceError, ValueError):
    """A dataset file (JSONL, YAML question set, CSV) that is malformed or empty."""

    doc = "dataset"


class InterventionSpecError(PersonaspaceError, ValueError):
    """A steering specification such as ``evil:+2.0@L12`` that does not parse."""

    doc = "intervention-spec"


class BackendError(PersonaspaceError):
    """A backend (nnsight, TransformerLens, remote) that is missing or misconfigured."""

    doc = "backend"


class VectorsNotFoundError(PersonaspaceError, FileNotFoundError):
    """No persona vectors at the given path, or for a model name on any vector search path."""

    doc = "vectors-not-found"


class AdapterError(PersonaspaceError, ValueError):
    """A LoRA adapter or fine-tuned model directory that is missing, damaged, or made for another model."""

    doc = "adapter"


class AlignmentError(PersonaspaceError, ValueError):
    """An alignment run that cannot start: bad layers, sizes, empty data, an unsupported model."""

    doc = "align"


class InvalidArgumentError(PersonaspaceError, ValueError):
    """A setting that cannot be right: a number not finite or out of range, layers that are not
    integers or are empty, prompts that are not a list of strings."""

    doc = "invalid-argument"


class OutputPathError(PersonaspaceError, OSError):
    """An output path that cannot be written (no permission, a file where a directory is needed)."""

    doc = "output-path"


class RunDirectoryError(PersonaspaceError):
    """A run directory made with other settings (or another trait file or model weights) than asked for."""

    doc = "run-directory"


def error_classes() -> list[type[PersonaspaceError]]:
    """Every ``PersonaspaceError`` class defined so far (this module's and any imported subclass), base first."""
    seen: list[type[PersonaspaceError]] = [PersonaspaceError]
    for cls in seen:  # grows while iterating: a breadth-first walk of the subclass tree
        seen += [sub for sub in cls.__subclasses__() if sub not in seen]
    return seen


def error_pages() -> list[str]:
    """Names of the shipped error pages (``index`` first), as accepted by :func:`explain`."""
    names = sorted(p.stem for p in ERROR_PAGES.glob("*.md"))
    return ["index"] + [n for n in names if n != "index"]


def _page_name(page: str) -> str | None:
    key = page.strip()
    key = key.rsplit("/", 1)[-1]
    if key.endswith(".md"):
        key = key[:-3]
    if key in error_pages():
        return key
    for cls in error_classes():
        if cls.__name__.lower() == key.lower():
            return cls.doc
    lowered = key.lower()
    return lowered if lowered in error_pages() else None


def explain(page: str = "index") -> str:
    """The text of an error page: a page name (``unknown-model``), a class name (``UnknownModelError``)
    or the ``doc`` of an error. ``explain()`` gives the index of every error.

    >>> explain("UnknownModelError").splitlines()[0]
    '# Unknown model (`UnknownModelError`)'
    """
    name = _page_name(page)
    if name is None:
        import difflib

        pages = error_pages()
        close = difflib.get_close_matches(page.strip().lower(), pages, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise PersonaspaceError(f"No error page named {page!r}.{hint} Known pages: {', '.join(pages)}.")
    return (ERROR_PAGES / f"{name}.md").read_text(encoding="utf-8")
