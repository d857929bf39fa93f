"""``python -m personaspace.cli``: the console script."""

from personaspace.cli.root import main

main()
