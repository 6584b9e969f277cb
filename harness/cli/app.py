"""The ``bench`` command line: thin wrappers that parse options and call the harness."""

from __future__ import annotations

import errno
import importlib
import importlib.metadata
import sys
from pathlib import Path

import typer

from harness import progress
from harness.errors import UserError
from harness.plugins import add_plugin_commands, add_plugin_files, get_registry

app = typer.Typer(
    name="bench",
    help="segbench: semi-supervised ultrasound segmentation benchmarks (MGCC and baselines).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module adds its commands with register(app); plugins add theirs through register_commands.
COMMAND_MODULES = ("plugins", "params", "data", "backbones", "generate", "run", "report", "predict", "status")


def _warn_plugin_problems() -> None:
    for info in get_registry().problems:
        where = f" ({info.distribution} {info.version})".rstrip() if info.distribution else ""
        typer.secho(f"warning: plugin {info.name!r}{where} failed: {info.error}", fg="yellow", err=True)


def _early_plugin_files(argv: list[str]) -> list[Path]:
    """``--plugin FILE`` must be known before sub-commands are built, so read it from argv."""
    files = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            files.append(Path(argv[i + 1]))
        elif arg.startswith("--plugin="):
            files.append(Path(arg.split("=", 1)[1]))
    return files


def _print_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("segbench")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed: pip install -e .)"
        typer.echo(f"segbench {version}")
        raise typer.Exit()


@app.callback()
def _root(
    plugin: list[Path] = typer.Option(
        None, "--plugin", help="Load a one-file plugin (a .py file with @hookimpl functions) for this call."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print segbench's version and exit."
    ),
) -> None:
    """segbench: semi-supervised ultrasound segmentation benchmarks."""


def build_app(argv: list[str] | None = None) -> typer.Typer:
    """Register built-in command modules and plugin commands on ``app``."""
    argv = sys.argv[1:] if argv is None else argv
    add_plugin_files(_early_plugin_files(argv))
    for name in COMMAND_MODULES:
        importlib.import_module(f"harness.cli.commands.{name}").register(app)
    registry = get_registry()
    _warn_plugin_problems()
    add_plugin_commands(registry, app, lambda message: typer.secho(f"warning: {message}", fg="yellow", err=True))
    return app


def main() -> None:
    """Entry point of the ``bench`` console script."""
    try:
        build_app()
        # long steps of any command (decoding a dataset, hashing it) show their progress
        with progress.reporting(progress.for_console()):
            app()
    except UserError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(2) from None
    except OSError as exc:  # a full disk, a read-only or missing folder: the path and the reason, no traceback
        typer.secho(f"error: {os_error_text(exc)}", fg="red", err=True)
        raise SystemExit(2) from None


def os_error_text(exc: OSError) -> str:
    """One line for an I/O error: what failed, on which path, and what to check."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    reason = exc.strerror or str(exc)
    hint = {
        errno.ENOSPC: "free space on that disk or write elsewhere",
        errno.EDQUOT: "free space on that disk or write elsewhere",
        errno.EACCES: "check its permissions or write elsewhere",
        errno.EPERM: "check its permissions or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
    }.get(exc.errno or -1, "check the path")
    return f"{reason}: {paths or '(no path given)'}; {hint}"


if __name__ == "__main__":
    main()
