"""The error type for bad user input: the CLI prints its message alone, without a traceback."""


class UserError(Exception):
    """Bad input or configuration; the message names the file or value and what to do."""
