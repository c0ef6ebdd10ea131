"""The one error family raised at the library's boundaries; every message says what to do next.

The command line maps the family onto exit codes: :class:`UsageError` and its subclasses (a bad
option, a missing input folder or weights file, a collection that does not exist, a feature spec
that differs from the collection's) exit with 2; every other :class:`CbirError` (the store is down,
weights cannot be had, a distributed stage failed after its retries, rows are missing after a
write) exits with 1, as does an ``OSError`` (a full or read-only disk); any other exception is a
bug of ours, reported as an internal error. Per-file problems (a corrupt image, a missing mask) are
not raised out of a job: they become rows of ``errors.parquet`` with their reason.
"""

from __future__ import annotations


class CbirError(Exception):
    """Base class of every error cbir_dist raises on purpose (CLI exit status 1)."""


class UsageError(CbirError, ValueError):
    """The request itself is wrong: an invalid option or configuration value (CLI exit status 2).

    Also a ``ValueError``, so callers that validate arguments the standard way keep working.
    """


class InputError(UsageError):
    """The input the user pointed at is not usable: no such folder, no images in it (exit status 2)."""


class SpecMismatchError(UsageError):
    """A query's feature spec differs from the one the collection was built with (exit status 2)."""


class ImageDecodeError(CbirError):
    """An image file could not be read or decoded (corrupt, too small, too large, not an image)."""


class WeightsError(CbirError):
    """Model weights could not be obtained or do not match what was expected."""


class WeightsNotFoundError(InputError, WeightsError):
    """A weights PATH the user gave names no file (a mistyped ``--weights``): exit status 2."""


class StoreError(CbirError):
    """The vector store (Milvus) refused an operation or could not be reached."""


class CollectionNotFoundError(InputError, StoreError):
    """The store has no collection of that name (a mistyped ``--collection``): exit status 2."""


class OutputError(CbirError):
    """An output (a file, a run or out folder) cannot be written there: read-only, full, not a folder (exit 1)."""


class PipelineError(CbirError):
    """A job's distributed stages failed after their retries, or their output was incomplete."""


class RunDirBusyError(CbirError):
    """Another job holds the run directory (its lock names the holder); exit status 1."""


class IncompleteRunError(CbirError):
    """A job finished but the store does not hold every row it planned to write (see errors.parquet)."""
