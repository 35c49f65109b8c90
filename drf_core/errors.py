"""Errors the engine raises for bad input: each message names the problem and the fix.

`DRFInputError` subclasses `ValueError` so callers that only know Python's built-ins still
catch it; the ComfyUI nodes show its message to the user as is.
"""


class DRFInputError(ValueError):
    """A user-supplied value (config field, folder, file, prompt) cannot be used."""


class ModelFolderError(DRFInputError):
    """A model folder is missing, incomplete, or holds a different kind of model."""


class TrainingDivergedError(RuntimeError):
    """Training produced non-finite losses or gradients too many steps in a row."""
