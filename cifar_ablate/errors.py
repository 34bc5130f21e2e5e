"""Errors caused by the user's input: shown as one line and a non-zero exit, never as a traceback."""
import sys
from typing import NoReturn

# A user's error exits 2, as argparse does (Hydra's own refusals while composing a config exit 1).
USER_ERROR_EXIT = 2


def exit_with_error(message) -> NoReturn:
    """The one line on stderr and exit 2: how every command of the package ends on a user's error."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT)


class UserError(Exception):
    """A value, file or option the user gave that cannot work; the message names it and what would fit."""


class ConfigError(UserError):
    """A config value out of range or inconsistent with another; `keys` name the config keys at fault."""

    def __init__(self, message: str, keys: tuple = ()):
        super().__init__(message)
        self.keys = keys


class DataError(UserError):
    """Missing, truncated or malformed dataset files."""


class CheckpointError(UserError):
    """A checkpoint to resume from that cannot be read or does not fit the configured model."""
