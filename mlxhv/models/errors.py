"""The one exception the model layer raises for things a user can fix."""


class ModelLoadError(Exception):
    """A model could not be loaded; the message says why and what to do (offline preset, memory, format)."""
