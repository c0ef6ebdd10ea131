"""Named failure points of the index job, for the fault-injection tests.

``CBIR_FAULT=<point>`` makes :func:`fault` raise :class:`InjectedFault` at that point;
``CBIR_FAULT=<point>:kill`` kills the process there with SIGKILL (nothing cleans up, as after a
power cut). Unset — always, outside tests — :func:`fault` does nothing. The points are listed in
:data:`POINTS`, in the order a run passes them.
"""

from __future__ import annotations

import os
import signal

ENV = "CBIR_FAULT"
POINTS = (
    "shard-written",  # a shard's rows (or features, for fitted specs) are saved, its marker not yet written
    "features-saved",  # fitted specs: every shard's features saved (phase 1 done)
    "fitted",  # fitted specs: statistics fitted and recorded in the run dir (phase 2), collection not created
    "collection-created",  # fitted specs: the collection exists with the fitted spec, no rows yet
    "rows-written",  # fitted specs: part of the rows upserted (after the first batch)
    "rows-flushed",  # fitted specs: every row upserted and flushed, the commit marker not yet written
    "committed",  # the commit marker is written (fitted) / every shard is done, before the read-back
)


class InjectedFault(RuntimeError):
    """Raised at a failure point named by ``$CBIR_FAULT`` (tests only)."""


def fault(point: str) -> None:
    """Fail here if ``$CBIR_FAULT`` names ``point`` (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, action = spec.partition(":")
    if name != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at {point!r}")
