"""mypy on the package, allowing no error beyond the committed baseline.

    python scripts/mypy_baseline.py            # check: fails (exit 1) on any error not in the baseline
    python scripts/mypy_baseline.py --update   # rewrite the baseline from the current errors

The baseline (requirements/mypy-baseline.txt) holds the errors the package had when the check was added,
one per line as ``path: error: message [code]`` -- line numbers (and argument positions) are dropped, so
that moving code does not count as a new error; an error that occurs several times in a file is listed as
many times. The check compares these lines as a multiset: a new error (or one more occurrence of a listed
one) fails; errors that were fixed only print a reminder to shrink the baseline with ``--update``. mypy's
settings are the ``[tool.mypy]`` section of pyproject.toml; its cache (.mypy_cache) keeps repeated runs to
a second or two (a cold run takes ~20 s).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "requirements" / "mypy-baseline.txt"
HEADER = (
    "# mypy errors accepted in personaspace/ (scripts/mypy_baseline.py); no new ones may appear.\n"
    "# Line numbers are dropped. Regenerate after fixing some: python scripts/mypy_baseline.py --update\n"
)
# "path:LINE: error: message  [code]"; also "path:LINE:COL:" should columns be switched on.
ERROR = re.compile(r"^(?P<path>[^:\n]+):\d+(?::\d+)?: error: (?P<message>.*)$")


def normalise(message: str) -> str:
    """Drop what changes when unrelated code moves: line numbers quoted in a message, argument positions."""
    message = re.sub(r"\bline \d+\b", "line N", message)
    return re.sub(r"^Argument \d+ ", "Argument N ", message).strip()


def run_mypy() -> tuple[Counter[str], dict[str, list[str]]]:
    """The current errors as normalised lines (with counts), and the raw lines behind each."""
    cmd = [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--hide-error-context"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode not in (0, 1) or "error: " in proc.stderr:
        sys.stderr.write(proc.stdout + proc.stderr)
        sys.exit(f"mypy failed to run (exit {proc.returncode})")
    errors: Counter[str] = Counter()
    raw: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            key = f"{Path(m['path']).as_posix()}: error: {normalise(m['message'])}"
            errors[key] += 1
            raw.setdefault(key, []).append(line)
    return errors, raw


def read_baseline() -> Counter[str]:
    if not BASELINE.exists():
        return Counter()
    lines = BASELINE.read_text().splitlines()
    return Counter(line for line in lines if line.strip() and not line.startswith("#"))


def write_baseline(errors: Counter[str]) -> None:
    BASELINE.parent.mkdir(parents=True, exist_ok=True)
    BASELINE.write_text(HEADER + "".join(f"{line}\n" for line in sorted(errors.elements())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="rewrite the baseline from the current errors")
    args = parser.parse_args(argv)

    errors, raw = run_mypy()
    rel = BASELINE.relative_to(ROOT)
    if args.update:
        write_baseline(errors)
        print(f"mypy: wrote {rel} with {sum(errors.values())} errors")
        return 0

    baseline = read_baseline()
    new = errors - baseline
    fixed = baseline - errors
    if new:
        print(f"mypy: {sum(new.values())} new error(s) not in {rel}:")
        for key, count in sorted(new.items()):
            # Every occurrence of that message in that file, with line numbers: the new one(s) are among them.
            more = f"  ({count} more than the baseline's {baseline[key]})" if baseline[key] else ""
            for line in raw[key]:
                print(f"  {line}{more}")
                more = ""
        print("Fix them (preferred), or if they are deliberate: python scripts/mypy_baseline.py --update")
        return 1
    summary = f"mypy: no new errors ({sum(errors.values())} in the baseline)"
    if fixed:
        summary += (
            f"; {sum(fixed.values())} baseline error(s) are fixed -- "
            f"shrink the baseline: python scripts/mypy_baseline.py --update"
        )
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
