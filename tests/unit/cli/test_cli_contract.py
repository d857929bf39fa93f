"""The exit-code and message contract of the command line (docs/errors/index.md, top table).

usage error -> 2 and one ``error: ... (see: personaspace CMD --help)`` line; a PersonaspaceError or an
OSError -> 2 and one ``error: ... (details: personaspace explain PAGE)`` line; Ctrl-C -> 130 and
``interrupted; rerun the same command to resume``; a bug -> 1 and one ``internal error: ...`` line, with
the traceback only under ``--debug`` / ``PERSONASPACE_DEBUG=1``. The "must show" cases run as real
processes (``python -m personaspace.cli``); the rest run in-process through :func:`personaspace.cli.root.run`,
which is what the console script calls.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import personaspace
from personaspace.cli import root as cli
from personaspace.errors import (
    ERROR_PAGES,
    PersonaspaceError,
    error_classes,
    error_pages,
    explain,
)

INTERRUPTED = "interrupted; rerun the same command to resume"
INTERNAL_TAIL = "(rerun with --debug or PERSONASPACE_DEBUG=1 for the traceback, and please report it)"
REPO = Path(__file__).resolve().parents[3]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PERSONASPACE_DEBUG"}
    env.update(extra)
    return env


# Starts the rest of the command line with Ctrl-C's default action: a shell that runs the suite in the background
# (`make test &`) starts it with SIGINT ignored, which every child inherits and Python then leaves ignored.
INTERRUPTIBLE = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"]


def run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "personaspace.cli", *args], capture_output=True, text=True, timeout=180, env=_env(**env), cwd=cwd
    )


# A script that adds a command raising what the test asks for, then runs the real entry point.
BOOM = textwrap.dedent(
    """
    import sys, time
    import typer
    from personaspace.cli import root as cli
    @cli.app.command("boom")
    def boom(kind: str) -> None:
        if kind == "bug":
            raise RuntimeError("kaput [red]x[/red]\\nsecond line")
        if kind == "oserror":
            raise PermissionError(13, "Permission denied", "/data/out/vectors.json")
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "interrupt-in-exec":  # Ctrl-C landing in code made from source text (dataclasses, namedtuples)
            exec("raise KeyboardInterrupt")
        if kind == "abort":
            raise typer.Abort()
        if kind == "exit3":
            raise typer.Exit(3)
        if kind == "sleep":
            print("ready", flush=True)
            time.sleep(120)

    sys.argv = ["personaspace", *sys.argv[1:]]
    cli.main()
    """
)


@pytest.fixture(scope="module")
def boom_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("boom") / "boom.py"
    path.write_text(BOOM)
    return path


def run_boom(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=180, env=_env(**env))


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stdout
    return lines[0]


# ---- real processes: the cases the issue asks to see --------------------------------------------------


def test_misspelt_command_is_a_usage_error():
    out = run("extrct")
    assert out.returncode == 2
    assert one_line(out) == "error: No such command 'extrct'. Did you mean 'extract'? (see: personaspace --help)"


def test_bare_personaspace_names_the_commands():
    out = run()
    assert out.returncode == 2
    line = one_line(out)
    assert line.startswith("error: missing command; choose one of: ") and line.endswith("(see: personaspace --help)")
    for command in ("extract", "steer", "models", "traits", "explain"):
        assert command in line


def test_missing_option_is_a_usage_error():
    out = run("extract")
    assert out.returncode == 2
    line = one_line(out)  # click's wording varies a little between versions
    assert line.startswith("error: Missing option ") and "--trait" in line and line.endswith(" (see: personaspace extract --help)")


def test_user_error_is_one_line_with_a_pointer_that_works_outside_a_checkout(tmp_path):
    out = run("models", "info", "no-such-model", cwd=tmp_path)
    assert out.returncode == 2
    line = one_line(out)
    assert re.fullmatch(r"error: Unknown model 'no-such-model'\. [^\n]+ \(details: personaspace explain unknown-model\)", line)
    page = run("explain", "unknown-model", cwd=tmp_path)  # no docs/ folder here: the page ships with the package
    assert page.returncode == 0 and page.stdout.startswith("# Unknown model")


def test_internal_error_is_one_line_and_the_traceback_only_under_debug(boom_script):
    out = run_boom(boom_script, "boom", "bug")
    assert out.returncode == 1
    assert one_line(out) == f"internal error: RuntimeError: kaput [red]x[/red] second line {INTERNAL_TAIL}"
    for debug in (run_boom(boom_script, "--debug", "boom", "bug"), run_boom(boom_script, "boom", "bug", PERSONASPACE_DEBUG="1")):
        assert debug.returncode == 1
        assert "Traceback (most recent call last)" in debug.stderr and "RuntimeError: kaput" in debug.stderr
        assert debug.stderr.splitlines()[-1].startswith("internal error: RuntimeError: kaput")


def test_ctrl_c_exits_130_with_one_line(boom_script):
    proc = subprocess.Popen(
        [*INTERRUPTIBLE, sys.executable, str(boom_script), "boom", "sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err.splitlines() == [INTERRUPTED]


def test_ctrl_c_inside_exec_of_source_text_still_exits_130(boom_script):
    """CPython marks a KeyboardInterrupt raised inside ``exec`` of a string and, however it was handled, ends
    the process by SIGINT (status -2) unless something clears the mark; a Ctrl-C during an import often lands
    there (dataclasses build ``__init__`` that way). This made the extract test below fail now and then."""
    # as `python -m` (a script run as a file exits inside CPython's SystemExit handling, before the mark is read)
    out = subprocess.run([sys.executable, "-m", boom_script.stem, "boom", "interrupt-in-exec"], capture_output=True,
                         text=True, timeout=180, env=_env(), cwd=boom_script.parent)
    assert out.returncode == 130, out.stderr
    assert out.stderr.splitlines() == [INTERRUPTED]


@pytest.mark.integration
def test_ctrl_c_during_extract_exits_130_and_the_rerun_resumes(tmp_path):
    """SIGINT while `extract` loads the embedded model or generates: exit 130 and the message."""
    out = tmp_path / "run"
    # the default size (200 answers to generate): still running when the signal comes, even on a loaded machine
    args = ["extract", "--trait", "evil", "--judge", "none", "--out", str(out)]
    proc = subprocess.Popen(
        [*INTERRUPTIBLE, sys.executable, "-m", "personaspace.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the run directory exists: arguments checked, model loading or generating
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == [INTERRUPTED]


# ---- in-process: the same contract through cli.run -----------------------------------------------------


@pytest.fixture
def contract(capsys, monkeypatch):
    """Run the CLI in this process: returns (exit code, stdout, stderr lines)."""
    monkeypatch.delenv("PERSONASPACE_DEBUG", raising=False)

    def go(*args: str):
        code = cli.run(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err.splitlines()

    return go


@pytest.fixture
def boom_command():
    """A command ``boom`` raising the exception it is given (removed afterwards)."""
    import typer

    raised: dict = {}

    def boom() -> None:
        raise raised["exc"]

    cli._command()  # subapps mounted first, so that rebuilding below keeps them
    info_count = len(cli.app.registered_commands)
    cli.app.command("boom")(boom)
    cli._state["command"] = None
    yield lambda exc: raised.__setitem__("exc", exc)
    del cli.app.registered_commands[info_count:]
    cli._state["command"] = None
    assert typer  # imported for the exceptions used by tests


def test_help_is_exit_0_on_stdout(contract):
    code, out, err = contract("--help")
    assert code == 0 and err == []
    assert "extract" in out and "--debug" in out and "explain" in out
    code, out, err = contract("models", "list", "--help")
    assert code == 0 and err == [] and "Usage" in out


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["models"], r"error: missing command; choose one of: (info|list|prepare), (info|list|prepare), (info|list|prepare) \(see: personaspace models --help\)"),
        (["traits", "shwo"], r"error: No such command 'shwo'\. Did you mean 'show'\? \(see: personaspace traits --help\)"),
        (["explain", "a", "b"], r"error: Got unexpected extra argument(\(s\))? \(b\) \(see: personaspace explain --help\)"),
        (["geometry"], r"error: Missing argument '(vectors|VECTORS)'\. \(see: personaspace geometry --help\)"),
        (["--debug"], r"error: missing command; choose one of: .*extract.* \(see: personaspace --help\)"),
    ],
)
def test_usage_errors(contract, args, pattern):
    code, out, err = contract(*args)
    assert code == 2 and len(err) == 1, err
    assert re.fullmatch(pattern, err[0]), err[0]


@pytest.mark.parametrize("option, value", [("--max-new-tokens", "1.5"), ("--temperature", "warm"), ("--seed", "x")])
def test_bad_value_types_are_usage_errors(contract, option, value):
    code, _, err = contract("extract", "--trait", "evil", option, value)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: Invalid value for '{option}'") and err[0].endswith("(see: personaspace extract --help)")


def test_unknown_option_is_a_usage_error(contract):
    code, _, err = contract("steer", "--nope")
    assert code == 2 and len(err) == 1 and err[0].startswith("error: No such option: --nope")


def test_rich_markup_in_messages_is_printed_as_is(contract):
    code, _, err = contract("traits", "show", "[bold]evil[/bold]")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: [bold]evil[/bold]") and err[0].endswith("(details: personaspace explain trait-file)")


def test_personaspace_error_message_is_collapsed_to_one_line(contract, boom_command):
    from personaspace.errors import VectorsNotFoundError

    boom_command(VectorsNotFoundError("No vectors for 'x'. Looked in:\n    /a  (missing)\n    /b\nExtract them first."))
    code, _, err = contract("boom")
    assert code == 2
    assert err == ["error: No vectors for 'x'. Looked in: /a  (missing) /b Extract them first. (details: personaspace explain vectors-not-found)"]


@pytest.mark.parametrize(
    "exc, line",
    [
        (PermissionError(13, "Permission denied", "/data/out/v.json"), "error: file system error: /data/out/v.json: Permission denied"),
        (OSError(28, "No space left on device", "runs/x/generations.jsonl"), "error: file system error: runs/x/generations.jsonl: No space left on device"),
        (OSError(30, "Read-only file system", "/mnt/ro/x", None, "/mnt/ro/y"), "error: file system error: /mnt/ro/x -> /mnt/ro/y: Read-only file system"),
        (ConnectionRefusedError(111, "Connection refused"), "error: file system error: ConnectionRefusedError: Connection refused"),
    ],
)
def test_os_errors_are_user_errors_naming_the_path(contract, boom_command, exc, line):
    boom_command(exc)
    code, _, err = contract("boom")
    assert code == 2
    assert err == [f"{line} (details: personaspace explain output-path)"]


def test_output_path_error_keeps_its_own_message(contract, boom_command):
    from personaspace.errors import OutputPathError

    boom_command(OutputPathError("cannot use x as an output directory: it is a file"))
    code, _, err = contract("boom")
    assert code == 2 and err == ["error: cannot use x as an output directory: it is a file (details: personaspace explain output-path)"]


def test_interrupt_and_abort_are_130(contract, boom_command):
    import typer

    for exc in (KeyboardInterrupt(), typer.Abort()):
        boom_command(exc)
        code, _, err = contract("boom")
        assert code == 130 and err == [INTERRUPTED]


def test_click_abort_of_either_click_is_130():
    import click
    import typer

    assert cli.handle_exception(click.exceptions.Abort()) == 130
    assert cli.handle_exception(typer.Abort()) == 130  # typer's own class from typer 0.17 (vendored click)


def test_exit_codes_of_typer_exit_pass_through(contract, boom_command):
    import typer

    boom_command(typer.Exit(3))
    assert contract("boom")[0] == 3
    boom_command(SystemExit(4))
    assert contract("boom")[0] == 4


def test_internal_error_in_process(contract, boom_command, monkeypatch):
    boom_command(KeyError("missing [key]"))
    code, _, err = contract("boom")
    assert code == 1 and err == [f"internal error: KeyError: 'missing [key]' {INTERNAL_TAIL}"]
    monkeypatch.setenv("PERSONASPACE_DEBUG", "1")
    code, _, err = contract("boom")
    assert code == 1 and err[0] == "Traceback (most recent call last):" and err[-1].startswith("internal error: KeyError")
    monkeypatch.setenv("PERSONASPACE_DEBUG", "0")
    assert len(contract("boom")[2]) == 1
    code, _, err = contract("--debug", "boom")
    assert code == 1 and err[0] == "Traceback (most recent call last):"


def test_usage_errors_of_the_vendored_and_plain_click_are_recognised():
    import click

    exc = click.UsageError("No such command 'x'.")
    assert cli.handle_exception(exc) == 2
    exc = click.BadParameter("'1.5' is not a valid integer.", param_hint="'--layer'")
    assert cli.handle_exception(exc) == 2
    assert cli.handle_exception(click.exceptions.Exit(0)) == 0


# ---- explain: the pages ship with the package ---------------------------------------------------------------


def test_explain_prints_pages(contract):
    code, out, err = contract("explain")
    assert code == 0 and err == [] and out.startswith("# Errors a user can hit")
    code, out, _ = contract("explain", "UnknownModelError")
    assert code == 0 and out.startswith("# Unknown model")
    code, out, _ = contract("explain", "layer-out-of-range.md")
    assert code == 0 and out == (ERROR_PAGES / "layer-out-of-range.md").read_text()


def test_explain_unknown_page_lists_the_pages(contract):
    code, out, err = contract("explain", "unknown-modle")
    assert code == 2 and out == "" and len(err) == 1
    assert "Did you mean 'unknown-model'?" in err[0]
    for page in error_pages():
        assert page in err[0]


def test_every_error_class_has_a_page_and_the_index_lists_it():
    import importlib

    package = Path(personaspace.__file__).resolve().parent
    for path in package.rglob("*.py"):  # import every module that defines an error class
        if re.search(r"^class \w+\([^)]*Error\b", path.read_text(encoding="utf-8"), re.M):
            importlib.import_module(".".join(("personaspace", *path.relative_to(package).with_suffix("").parts)))
    index = explain("index")
    pages = set(error_pages())
    for cls in error_classes():
        assert cls.doc in pages, f"{cls.__name__}.doc = {cls.doc!r} has no page in {ERROR_PAGES}"
        assert (ERROR_PAGES / f"{cls.doc}.md").is_file()
        if cls.__module__ == "personaspace.errors":  # the properties, on classes whose constructor takes a message
            assert Path(cls("x").doc_path).is_file()
            assert cls("x").pointer == f"personaspace explain {cls.doc}"
        if cls.__module__ == "personaspace.errors":
            assert f"`{cls.__name__}`" in index, f"{cls.__name__} is missing from the table in index.md"
    for page in pages - {"index"}:
        assert f"]({page}.md)" in index, f"index.md does not link {page}.md"
        assert explain(page).startswith("# ")


def test_explain_api_matches_the_cli_and_str():
    err = PersonaspaceError("something went wrong")
    assert str(err) == "something went wrong (details: personaspace explain index)"
    with pytest.raises(PersonaspaceError, match="No error page named 'nope'"):
        explain("nope")
    assert explain("InvalidArgumentError").startswith("# Invalid argument")
    assert explain("output-path") == (ERROR_PAGES / "output-path.md").read_text()


def test_error_pages_are_package_data():
    assert '"docs/errors/*.md"' in (REPO / "pyproject.toml").read_text()
    assert ERROR_PAGES.parent.parent == Path(personaspace.__file__).resolve().parent
