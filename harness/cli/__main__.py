"""``python -m harness.cli`` runs ``bench``."""

from harness.cli.app import main

main()
