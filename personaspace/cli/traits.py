"""``personaspace traits ...``: list, show, validate and generate trait files from the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from personaspace.errors import TraitFileError
from personaspace.traits.library import list_traits, load_trait, load_trait_file, save_trait

app = typer.Typer(
    help="Trait definitions: list the built-in library, inspect, validate or generate trait files.",
    no_args_is_help=True,
)
console = Console()


@app.command("list")
def list_command() -> None:
    """Show every built-in trait with its family, valence, poles and question counts."""
    table = Table(title="Built-in traits")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("family", no_wrap=True)
    table.add_column("valence", no_wrap=True)
    table.add_column("poles (high / low)")
    table.add_column("questions", no_wrap=True)
    for name in list_traits():
        try:
            trait = load_trait(name)
        except TraitFileError as exc:
            first = exc.message.splitlines()[0]
            table.add_row(name, "[red]invalid[/red]", "", f"[red]{first}[/red]", "")
            continue
        table.add_row(
            trait.name,
            trait.family,
            trait.valence,
            f"{trait.pole_high} / {trait.pole_low}",
            f"{len(trait.extraction_questions)} + {len(trait.evaluation_questions)}",
        )
    console.print(table)


@app.command("show")
def show_command(
    name_or_path: str = typer.Argument(..., help="A built-in trait name or a path to a trait YAML file."),
    questions: int = typer.Option(3, "--questions", "-q", help="How many questions of each set to show."),
) -> None:
    """Print a trait: description, poles, instruction pairs, first questions, statement counts."""
    trait = load_trait(name_or_path)
    console.print(f"[bold]{trait.name}[/bold]  ({trait.family}, {trait.valence} valence)")
    if trait.source:
        console.print(f"[dim]{trait.source}[/dim]")
    console.print(f"\n{trait.description}\n")
    console.print(f"[bold]poles[/bold]  high: {trait.pole_high}  |  low: {trait.pole_low}\n")
    console.print("[bold]instructions[/bold] (system prompts: + high pole, - low pole)")
    pairs = Table.grid(padding=(0, 1))
    pairs.add_column(justify="right", no_wrap=True)
    pairs.add_column(no_wrap=True)
    pairs.add_column()
    for i, pair in enumerate(trait.instructions, start=1):
        pairs.add_row(f"{i}.", "[green]+[/green]", pair.pos)
        pairs.add_row("", "[red]-[/red]", pair.neg)
    console.print(pairs)
    for label, items in (
        ("extraction questions", trait.extraction_questions),
        ("evaluation questions", trait.evaluation_questions),
    ):
        console.print(f"\n[bold]{label}[/bold] ({len(items)})")
        for question in items[: max(questions, 0)]:
            console.print(f"  - {question}")
    console.print(
        f"\n[bold]statements[/bold]  high: {len(trait.statements_high)}  |  "
        f"low: {len(trait.statements_low)}"
    )
    console.print(f"[dim]content hash {trait.content_hash[:16]}[/dim]")


@app.command("validate")
def validate_command(
    paths: List[Path] = typer.Argument(..., help="Trait YAML files to check."),
) -> None:
    """Check trait files against the schema; report every problem of every file."""
    failures: list[str] = []
    for path in paths:
        try:
            trait = load_trait_file(path)
        except TraitFileError as exc:
            failures.append(exc.message)
            console.print(f"[red]invalid[/red] {path}")
            continue
        console.print(f"[green]ok[/green]      {path}  ({trait.name})")
    if failures:
        raise TraitFileError("\n".join(failures))


@app.command("new")
def new_command(
    description: str = typer.Argument(..., help='One line describing the trait, e.g. "humble and self-effacing".'),
    name: Optional[str] = typer.Option(None, "--name", help="Trait name (lowercase identifier)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the file [default: ./<name>.yaml]."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint."),
    model: Optional[str] = typer.Option(None, "--model", help="Model that writes the trait."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Validation retries before giving up."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
) -> None:
    """Generate a trait file from a description with an LLM, validate it and write it atomically."""
    from personaspace._util.http import OpenAICompatClient
    from personaspace.traits.generate import generate_trait

    planned = out if out is not None else (Path(f"{name}.yaml") if name else None)
    if planned is not None and planned.exists() and not force:
        raise TraitFileError(f"{planned}: already exists (use --force to overwrite)")
    with OpenAICompatClient(base_url=base_url, model=model) as client:
        with console.status(f"asking {client.model or 'the model'} to write the trait ..."):
            trait = generate_trait(description, name=name, client=client, max_attempts=max_attempts)
    target = out if out is not None else Path(f"{trait.name}.yaml")
    if target.exists() and not force:
        raise TraitFileError(f"{target}: already exists (use --force to overwrite)")
    save_trait(trait, target)
    console.print(f"[green]wrote[/green] {target}  ({trait.name}: {trait.pole_high} / {trait.pole_low})")
