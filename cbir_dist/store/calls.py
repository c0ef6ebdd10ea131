"""One Milvus call: its timeout, its retries, and pymilvus' or gRPC's failure turned into a StoreError.

Every call has a timeout (:data:`TIMEOUTS`: metadata, data, build) and transient failures —
connection refused or reset, unavailable, deadline exceeded, server busy or rate-limited — are
retried with bounded exponential backoff (tenacity; ``$CBIR_MILVUS_RETRY_S`` seconds in all,
default 120), then fail with a :class:`~cbir_dist.errors.StoreError` naming the URI and the
operation. Messages and logs never carry the token (:func:`redact`).
"""

from __future__ import annotations

import logging
import os
import time

from ..errors import StoreError
from . import schema

logger = logging.getLogger(__name__)

#: Seconds each kind of call may take (one attempt; pymilvus retries inside it, then we retry it).
TIMEOUTS = {"meta": 30.0, "data": 300.0, "build": 3600.0}
RETRY_BUDGET_S = 120.0  # all attempts of one call together; $CBIR_MILVUS_RETRY_S overrides
RETRY_ENV = "CBIR_MILVUS_RETRY_S"
TIMEOUT_ENV = "CBIR_MILVUS_TIMEOUT_S"  # caps every per-call timeout (tests, impatient users)
_TRANSIENT_STATUS = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"}
_TRANSIENT_TEXT = ("connection refused", "connection reset", "server unavailable", "deadline exceeded",
                   "server is busy", "rate limit", "too many requests", "socket closed", "broken pipe",
                   "fail connecting to server", "retry timeout", "stream removed", "channel is not ready",
                   # a standalone server whose components are (re)starting or starved answers
                   # "service not ready[standalone=1]: Abnormal" for a while
                   "service not ready",
                   # a standalone server restarted after a hard kill: its coordinator still assigns the
                   # channels to the dead data node until that node's session expires (~30-60 s)
                   "node not match", "node not found", "session not found")
_REJECTED = ("UNAUTHENTICATED", "PERMISSION_DENIED")


class CallsMixin:
    """The call policy of :class:`~cbir_dist.store.milvus.VectorStore`.

    Uses the host's ``client`` (the MilvusClient), ``uri`` and ``collection`` (for messages),
    ``_token`` (redacted from them) and ``_loaded`` (whether a "not loaded" reply means the server
    restarted since the collection was loaded).
    """

    @staticmethod
    def _timeout(kind: str) -> float:
        cap = os.environ.get(TIMEOUT_ENV)
        return min(TIMEOUTS[kind], float(cap)) if cap else TIMEOUTS[kind]

    def _retrying(self, what: str, fn):
        """``fn()``, retried on transient failures with bounded exponential backoff; the last error re-raised."""
        from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

        budget = float(os.environ.get(RETRY_ENV, RETRY_BUDGET_S))
        if budget <= 0:
            return fn()

        def log_retry(state) -> None:
            exc = state.outcome.exception()
            logger.warning("%s on %s failed (%s: %s); retrying in %.1f s (attempt %d)", what, self.uri,
                           type(exc).__name__, redact(str(exc), self._token)[:200], state.next_action.sleep,
                           state.attempt_number)

        for attempt in Retrying(retry=retry_if_exception(transient), stop=stop_after_delay(budget),
                                wait=wait_exponential(multiplier=0.5, max=15.0), reraise=True,
                                before_sleep=log_retry):
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    def _call(self, what: str, kind: str, method: str, *args, **kwargs):
        """One client call with its timeout and retries; pymilvus errors become a StoreError naming the call."""
        from pymilvus.exceptions import MilvusException

        fn = getattr(self.client, method)
        t0 = time.monotonic()

        def once():
            return self._retrying(what, lambda: fn(*args, timeout=self._timeout(kind), **kwargs))

        try:
            try:
                return once()
            except MilvusException as exc:
                if not (self._loaded and not_loaded(exc)):
                    raise
                # A server restarted since this store loaded the collection brings it back released
                # (Milvus 2.3 reloads it in the background, or not at all): load it, then try again.
                logger.warning("%s on %s: the collection is no longer loaded (the server restarted?); "
                               "loading it again", what, self.uri)
                self._call("reload after restart: load", "build", "load_collection", self.collection)
                return once()
        except Exception as exc:  # noqa: BLE001 - pymilvus' errors, and gRPC's that it lets through
            if not (isinstance(exc, MilvusException) or is_rpc_error(exc)):
                raise
            if schema.grpc_status(exc) in _REJECTED:
                raise StoreError(
                    f"{what} on collection {self.collection!r}: Milvus at {self.uri} rejected the credentials "
                    f"({schema.grpc_status(exc).lower().replace('_', ' ')}; the token was changed or revoked "
                    "during the job?). Pass a valid one with MILVUS_TOKEN or --token-file and rerun: the job "
                    "resumes") from exc
            spent = time.monotonic() - t0
            tried = f" (gave up after {spent:.0f} s of retries)" if transient(exc) and spent > 1 else ""
            message = getattr(exc, "message", None) or (exc.details() if is_rpc_error(exc) else str(exc))
            raise StoreError(f"{what} on collection {self.collection!r} in {self.uri} failed{tried}: "
                             f"{redact(str(message), self._token)}") from exc


def transient(exc: BaseException) -> bool:
    """Whether a pymilvus/gRPC failure is worth retrying: the server is (re)starting, busy or unreachable."""
    status = schema.grpc_status(exc)
    if status in _REJECTED:  # a wrong token does not get better by waiting
        return False
    if status in _TRANSIENT_STATUS:
        return True
    text = str(getattr(exc, "message", "") or exc).lower()
    return any(t in text for t in _TRANSIENT_TEXT)


def is_rpc_error(exc: BaseException) -> bool:
    """A gRPC call error (``grpc.RpcError``, e.g. ``_InactiveRpcError``) that pymilvus did not wrap."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - pymilvus depends on grpcio
        return False
    return isinstance(exc, grpc.RpcError) and callable(getattr(exc, "details", None))


def not_loaded(exc: BaseException) -> bool:
    """Whether a failure says the collection is not loaded (it was, before a server restart).

    Milvus' code 101 (collection not loaded); the server says "collection not loaded", milvus-lite
    "is in state 'released'".
    """
    text = str(getattr(exc, "message", "") or exc).lower()
    return getattr(exc, "code", None) == 101 or "collection not loaded" in text or "state 'released'" in text


def redact(text: str, token: str) -> str:
    """``text`` with the token (and its password part) removed."""
    text = str(text)
    if token:
        text = text.replace(token, "***")
        _user, sep, password = token.partition(":")
        # the password alone too, unless it is Milvus' public default (which names the product)
        if sep and password and password != "Milvus":
            text = text.replace(password, "***")
    return text
