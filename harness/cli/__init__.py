"""The ``bench`` command line: thin commands that parse, call one library function and print."""

from harness.cli.app import app, main

__all__ = ["app", "main"]
