"""Error types. Each carries a one-line message that says what is wrong and what to do.

The CLI maps them to exit codes: `InputError` (bad input or usage) -> 2, any other
`FrameFusionError` (processing failed) -> 1.
"""


class FrameFusionError(Exception):
    """Base class of the errors this project raises on purpose."""


class InputError(FrameFusionError, ValueError):
    """Bad input from the user: a file, a setting, a model name. Caught before any model is loaded when possible."""


class VideoError(InputError):
    """A video that cannot be read or sampled."""


class ProfileError(InputError):
    """A reduction profile file or setting that is not valid."""


class ModelLoadError(FrameFusionError):
    """A model that cannot be found, downloaded or loaded."""
