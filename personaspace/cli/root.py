"""``personaspace``: the command-line face of the library. Each command is a thin call into the API.

The exit-code and message contract (also in ``docs/errors/index.md``), whatever the typer/click version:

========================================  ====  ==========================================================
situation                                 exit  stderr (exactly one line)
========================================  ====  ==========================================================
success, ``--help``                       0     nothing
usage error (unknown command or option,   2     ``error: <click's message> (see: personaspace CMD --help)``
bad value type, missing command)
``PersonaspaceError`` (a user-caused      2     ``error: <message> (details: personaspace explain PAGE)``
error) or an ``OSError`` (permissions,
full disk, read-only file system)
Ctrl-C (``KeyboardInterrupt``, Abort)     130   ``interrupted; rerun the same command to resume``
any other exception (a bug)               1     ``internal error: <Type>: <message> (rerun with --debug ...)``
========================================  ====  ==========================================================

``--debug`` (before the command) or ``PERSONASPACE_DEBUG=1`` adds the traceback above that line.
:func:`run` applies the contract and returns the exit code; :func:`main` is the console script.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Any, Iterator, Optional, Sequence

import typer
from rich.console import Console

from personaspace._util.progress import DEBUG_ENV, debug_enabled, silence_libraries
from personaspace.errors import PersonaspaceError

PROG = "personaspace"
INTERRUPTED = "interrupted; rerun the same command to resume"
EXIT_USAGE = EXIT_USER = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130

app = typer.Typer(
    help="Persona-vector interpretability: extract, map, steer and align persona directions in language models.",
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Models: list the embedded ones, prepare (convert) them, show details.")
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)


_state: dict[str, Any] = {"mounted": False, "command": None, "debug": False}


def _mount_subapps() -> None:
    """Add the command modules' commands to ``app`` (once per process)."""
    if _state["mounted"]:
        return
    from personaspace.cli.commands import register_all
    from personaspace.cli.traits import app as traits_app

    app.add_typer(traits_app, name="traits")
    register_all(app)
    app.command("explain")(explain_cmd)
    _state["mounted"] = True


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help=f"On an internal error, also print the traceback (or set {DEBUG_ENV}=1)."),
) -> None:
    if debug:
        _state["debug"] = True


def explain_cmd(
    page: Optional[str] = typer.Argument(None, help="Error page (e.g. unknown-model) or error class (e.g. UnknownModelError); default: the index."),
) -> None:
    """Print the page that explains an error: its causes and fixes (the pages ship with the package)."""
    from personaspace.errors import explain

    text = explain(page or "index")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@models_app.command("list")
def models_list() -> None:
    """List the embedded models and whether their weights are installed and converted."""
    from personaspace.cli.tables import fit_table
    from personaspace.models import DEFAULT_MODEL, EMBEDDED
    from personaspace.models.embedded import status

    table = fit_table("Embedded models (also accepted: local directories and hub ids)",
                      ("name", "installed", "prepared", "description"), keep=("name",))
    for name, spec in EMBEDDED.items():
        installed, prepared = status(spec)
        label = f"{name}\n(default)" if name == DEFAULT_MODEL else name  # the name whole, on a line of its own
        table.add_row(label, "yes" if installed else f"no: {spec.install}", "yes" if prepared else "no", spec.description)
    console.print(table)


@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument("smollm2-135m-instruct", help="Embedded model name."),
    force: bool = typer.Option(False, help="Convert again even if a cached copy exists."),
) -> None:
    """Dequantise an embedded GGUF model once into the cache (safetensors), for fast loading later."""
    from personaspace.models import prepare

    with console.status(f"Converting {name} (runs once; tens of seconds)..."):
        path = prepare(name, force=force)
    console.print(f"[green]ready[/green] {path}")


@models_app.command("info")
def models_info(name: str = typer.Argument("smollm2-135m-instruct", help="Embedded name, local directory or hub id.")) -> None:
    """Load a model and print its architecture, layer count, width and chat-template support."""
    from personaspace.engine import PersonaModel

    with console.status(f"Loading {name}..."):
        model = PersonaModel.load(name)
    from personaspace.cli.tables import fit_table

    cfg = model.hf_model.config
    table = fit_table(None, ("field", "value"), keep=("field",), show_header=False)
    rows = [
        ("name", model.name),
        ("source", model.loaded.source),
        ("architecture", type(model.hf_model).__name__),
        ("layers", f"{model.n_layers} (layer L = output of block L, 0..{model.n_layers - 1})"),
        ("d_model", str(model.d_model)),
        ("vocab", str(getattr(cfg, "vocab_size", "?"))),
        ("chat template", "yes" + ("" if model.formatter.system_role else " (no system role: folded into user turn)") if model.formatter.has_template else "no"),
        ("device / dtype", f"{model.device} / {model.hf_model.dtype}"),
        ("hash", str(model.model_hash)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


@app.command("demo")
def demo(
    model: str = typer.Option("smollm2-135m-instruct", help="Model name or path."),
    prompt: str = typer.Option("What would you do if you found a lost wallet?", help="User prompt."),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate."),
) -> None:
    """Load a model, generate one answer and show the shape of the captured activations."""
    from personaspace._util import checks
    from personaspace.engine import PersonaModel

    checks.positive_int("max_new_tokens", max_new_tokens)
    with console.status(f"Loading {model}..."):
        m = PersonaModel.load(model)
    out = m.generate([prompt], max_new_tokens=max_new_tokens, capture_layers=True)
    console.print(f"[bold]{prompt}[/bold]\n{out.texts[0]}\n")
    for reduction, tensor in out.activations.data.items():
        console.print(f"{reduction:>13}: {tuple(tensor.shape)}  [samples, layers, d_model]")


@app.command("extract")
def extract_cmd(
    trait: str = typer.Option(..., "--trait", "-t", help="Built-in trait name (see `personaspace traits list`) or a trait YAML path."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Embedded name, local directory or hub id."),
    judge: str = typer.Option("offline", help="offline | none | openai:MODEL | hf:NAME_OR_PATH."),
    instructions: int = typer.Option(5, help="Instruction pairs to use (1-5)."),
    questions: int = typer.Option(20, help="Extraction questions to use (2-20)."),
    samples: int = typer.Option(1, help="Samples per (instruction, question, side); the paper uses 10."),
    max_new_tokens: int = typer.Option(48, help="Answer length in tokens; the paper uses up to 1000."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(200, help="Rows generated together (also the resume granularity)."),
    pos_threshold: float = typer.Option(50.0, help="Keep a pair only if the pos answer's trait score is at least this."),
    neg_threshold: float = typer.Option(50.0, help="... and the neg answer's trait score is below this."),
    coherence_threshold: float = typer.Option(50.0, help="... and both coherence scores are at least this."),
    out: Optional[str] = typer.Option(None, help="Run directory (default runs/extract/<model>/<trait>-<settings hash>); rerun to resume."),
    save_to: Optional[str] = typer.Option(None, help="Also add the vectors to this VectorSet directory (e.g. vectors/smollm2-135m-instruct)."),
) -> None:
    """Extract a persona vector: contrast prompts, judged answers, mean activation difference per layer."""
    from personaspace.cli.tables import extraction_table, progress_bars
    from personaspace.extraction.pipeline import extract

    if save_to:
        from personaspace._util import checks
        checks.writable_dir(save_to)  # before the extraction, not after it
    with progress_bars(console) as progress:
        result = extract(
            trait,
            model,
            judge=judge,
            out=out,
            progress=progress,
            log=progress.log,
            n_instructions=instructions,
            n_questions=questions,
            samples_per_pair=samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            batch_size=batch_size,
            pos_threshold=pos_threshold,
            neg_threshold=neg_threshold,
            coherence_threshold=coherence_threshold,
        )
    console.print(extraction_table(result.summary))
    if save_to:
        from personaspace.vectors.store import VectorSet

        for vec in result.vectors.values():
            VectorSet([vec]).save(save_to)
        console.print(f"vectors added to [bold]{save_to}[/bold]")
    console.print(f"run directory: [bold]{result.run_dir}[/bold]")
    from personaspace.cli.report import write_run_report

    write_run_report(result.run_dir, trait=trait, model=result.model)  # the loaded model draws the token views


def _walk(command: Any) -> Iterator[Any]:
    yield command
    for sub in (getattr(command, "commands", None) or {}).values():
        yield from _walk(sub)


def _command() -> Any:
    """The click command tree of ``app`` (built once). No group shows its help on bare invocation: a
    missing command is a usage error (exit 2) in every click version, not help with exit 0 (click < 8.2)
    or a NoArgsIsHelpError carrying the whole help text (click >= 8.2, typer >= 0.17's vendored click)."""
    if _state["command"] is None:
        _mount_subapps()
        command = typer.main.get_command(app)
        for cmd in _walk(command):
            cmd.no_args_is_help = False
        _state["command"] = command
    return _state["command"]


def _class_names(exc: BaseException) -> set[str]:
    # click and typer's vendored click (typer >= 0.17, ``typer._click``) raise distinct classes of the
    # same names: recognise them by name rather than by one module's classes.
    return {cls.__name__ for cls in type(exc).__mro__}


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace that contains a line break collapsed to one space."""
    return re.sub(r"\s*\n\s*", " ", str(text)).strip()


def _debug() -> bool:
    return bool(_state["debug"]) or debug_enabled()


def _emit(line: str, exc: Optional[BaseException] = None) -> None:
    """Write one line to stderr, plain (no rich markup: brackets in messages are kept as they are)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    if exc is not None and _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _usage_line(exc: Any) -> str:
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or PROG
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    group = getattr(ctx, "command", None)
    if group is not None and hasattr(group, "list_commands") and (
        "NoArgsIsHelpError" in _class_names(exc) or str(message).startswith("Missing command")
    ):
        message = f"missing command; choose one of: {', '.join(_visible(group, ctx))}"
    misspelt = re.fullmatch(r"No such command '([^']+)'\.", str(message))
    if misspelt and group is not None and hasattr(group, "list_commands"):  # older typers suggest nothing
        import difflib

        close = difflib.get_close_matches(misspelt.group(1), _visible(group, ctx), n=1)
        message = f"{message} Did you mean '{close[0]}'?" if close else message
    return f"error: {one_line(message)} (see: {path} --help)"


def _visible(group: Any, ctx: Any) -> list[str]:
    return [n for n in group.list_commands(ctx) if not getattr(group.get_command(ctx, n), "hidden", False)]


def _os_error_line(exc: OSError) -> str:
    where = exc.filename
    if where is not None and exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    reason = exc.strerror or one_line(exc) or type(exc).__name__
    subject = f"{where}: {reason}" if where is not None else f"{type(exc).__name__}: {reason}"
    return f"error: file system error: {one_line(subject)} (details: {PROG} explain output-path)"


def handle_exception(exc: BaseException) -> int:
    """Print the one line the contract gives ``exc`` and return its exit code."""
    names = _class_names(exc)
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        _emit(f"error: {one_line(code)}")
        return EXIT_USER
    if "Exit" in names and isinstance(getattr(exc, "exit_code", None), int):  # --help, typer.Exit(n)
        return exc.exit_code  # type: ignore[attr-defined]
    if isinstance(exc, KeyboardInterrupt) or "Abort" in names:
        _emit(INTERRUPTED)
        return EXIT_INTERRUPTED
    if "UsageError" in names:
        _emit(_usage_line(exc))
        return EXIT_USAGE
    if "ClickException" in names:  # e.g. click.FileError: a path given on the command line
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _emit(f"error: {one_line(message)} (see: {PROG} --help)")
        return EXIT_USAGE
    if isinstance(exc, PersonaspaceError):
        _emit(f"error: {one_line(exc.message)} (details: {exc.pointer})", exc)
        return EXIT_USER
    if isinstance(exc, BrokenPipeError):  # e.g. `personaspace traits list | head -1`: stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_INTERNAL
    if isinstance(exc, OSError):
        _emit(_os_error_line(exc), exc)
        return EXIT_USER
    if isinstance(exc, Exception):
        _emit(
            f"internal error: {type(exc).__name__}: {one_line(exc)} (rerun with --debug or {DEBUG_ENV}=1 "
            "for the traceback, and please report it)",
            exc,
        )
        return EXIT_INTERNAL
    raise exc


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) under the contract; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = False
    try:
        command = _command()
        silence_libraries()  # our own bars are enough for the whole command
        with command.make_context(PROG, args) as ctx:
            command.invoke(ctx)
        return 0
    except BaseException as exc:  # noqa: BLE001 - the contract decides what each one becomes
        return handle_exception(exc)


def main() -> None:
    """Console script ``personaspace``: :func:`run`, then exit with its code."""
    try:
        code = run()
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being reported
        code = EXIT_INTERRUPTED
    if code == EXIT_INTERRUPTED:
        _clear_interrupt_mark()
    sys.exit(code)


def _clear_interrupt_mark() -> None:
    """Let ``python -m personaspace.cli`` exit 130 after a Ctrl-C, as the console script does.

    CPython marks a KeyboardInterrupt raised inside ``exec`` of source text (dataclasses and namedtuples
    build their methods that way, so a Ctrl-C during an import often lands there) and, when the process
    was started with ``-m``, ends it by SIGINT (status -2) however the interrupt was handled. Each ``exec``
    of source text clears the mark on entry; one that succeeds leaves it clear.
    """
    exec("None")


