"""Errors caused by the user's input: shown as one line and a non-zero exit, never as a traceback."""


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
