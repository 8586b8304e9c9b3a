"""``python -m casync`` runs the CLI."""

from casync.cli import main

main(prog_name="casync")
