"""The errors a user can cause, under one root.

Everything mlxhv raises for bad input (data, a model, settings, an output that exists, an API that will not serve
us) is an `MlxhvError`; the CLI turns every one of them into `error: <message>` and exit status 2
(`cli/common.user_errors`). Anything else escaping the library is a bug and keeps its traceback.
"""

from __future__ import annotations


class MlxhvError(Exception):
    """Base of every error a user can fix; its message says what was wrong and where."""


class SettingsError(MlxhvError, ValueError):
    """Settings that are invalid, or that cannot apply together (refused at start, never silently ignored)."""


class OutputExists(MlxhvError):
    """An output file or run directory is already there and the call was not told to overwrite or resume it."""


class ModelLoadError(MlxhvError):
    """A model could not be loaded; the message says why and what to do (offline preset, memory, format)."""


class EvalError(MlxhvError):
    """An evaluation cannot run or resume as asked (mismatched settings in a run directory, …)."""


class DatagenError(MlxhvError):
    """Base class of errors raised by mlxhv.datagen (the OpenAI-compatible dataset generator)."""


class DataError(MlxhvError):
    """One or more problems in input files; `errors` holds each as a `data.io.LineError` (file:line: field: msg)."""

    def __init__(self, errors: list):
        self.errors = list(errors)
        head = "\n".join(str(e) for e in self.errors[:20])
        more = f"\n… and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(head + more)
