"""``python -m casync`` runs the CLI."""

from casync.cli.main import main

main(prog_name="casync")
