"""The errors caused by input, each meant as one line on the terminal.

The CLIs catch :data:`BAD_INPUT` (every class below), print the message and exit 2; anything
else is a bug and keeps its traceback in the run's ``log.txt``. This module imports nothing of
the package, so every room can raise these without an import circle.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad config value or key; the message names the key."""


class DataError(ValueError):
    """A real-data problem; the message names the file or config key."""


class ImageSetError(ValueError):
    """A broken image set; the message names the file."""


class RunDirError(RuntimeError):
    """The run directory cannot be used (held by another process, different config)."""


class LaunchError(RuntimeError):
    """The processes were launched in a way that cannot work."""


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, bad batch layout)."""


class ModelLoadError(RuntimeError):
    """A checkpoint folder or pretrained id that cannot be loaded."""


BAD_INPUT: tuple[type[BaseException], ...] = (
    ConfigError, DataError, ImageSetError, RunDirError, LaunchError, TrainingError, ModelLoadError,
)
