"""The collection's schema and the checks every VectorStore call makes before it talks to Milvus.

Pure Python and numpy: field limits, input validation with messages that say what to do, the
feature spec stored as collection properties (split into parts, since a property value holds at
most 64 kB), the IVF list count, and reading gRPC status codes out of pymilvus errors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import StoreError, UsageError
from ..io.files import MAX_LABEL_BYTES, MAX_PATH_BYTES  # noqa: F401 - the row contract's limits, re-exported

INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT")
MAX_DIM = 32768  # Milvus' limit for FLOAT_VECTOR
SPEC_KEY = "cbir_spec"  # property keys: cbir_spec_parts = N, cbir_spec_0 ... cbir_spec_{N-1}
SPEC_PART_CHARS = 16384  # <= 64 kB of UTF-8 per property value


def grpc_status(exc: BaseException) -> str | None:
    """The gRPC status code name (``"UNAVAILABLE"``, ``"UNAUTHENTICATED"``, ...) behind a pymilvus error, if any.

    pymilvus reports every failed connection as "illegal connection params or server unavailable";
    the gRPC error it wraps says which.
    """
    seen = 0
    while exc is not None and seen < 10:
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                name = getattr(code(), "name", None)
            except Exception:  # noqa: BLE001 - not a gRPC error after all
                name = None
            if isinstance(name, str):
                return name
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def auto_nlist(n_rows: int) -> int:
    """Default IVF list count for ``n_rows`` rows: the power of two nearest ``4 sqrt(n)``, at most
    ``n / 39`` (FAISS wants 39 training points per list) and in [1, 16384]."""
    target = 4.0 * math.sqrt(max(n_rows, 1))
    nlist = 2 ** round(math.log2(target))
    return int(max(1, min(nlist, 16384, 2 ** int(math.log2(max(n_rows // 39, 1))))))


def check_dim(dim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not 1 <= int(dim) <= MAX_DIM:
        raise ValueError(f"dim must be in [1, {MAX_DIM}] (Milvus' limit), got {dim}")
    return int(dim)


def check_index(index_type: str, index_params: dict | None) -> tuple[str, dict]:
    if not isinstance(index_type, str) or index_type.upper() not in INDEX_TYPES:
        raise UsageError(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
    if index_params is not None and not isinstance(index_params, dict):
        raise TypeError(f"index_params must be a dict, got {type(index_params).__name__}")
    return index_type.upper(), dict(index_params or {})


def check_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"ids must be integers (content ids), got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and (arr > np.iinfo(np.int64).max).any():
        raise ValueError("ids must fit in int64 (content ids are 63-bit)")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise ValueError(f"ids must be non-negative (-1 pads search results), got {int(arr.min())}")
    return arr


def check_strings(values, n: int, what: str, max_bytes: int) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of str, got a single str")
    values = list(values) if not isinstance(values, Sequence) else values
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries but {n} ids were given")
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str | np.str_):
            raise TypeError(f"{what}[{i}] must be a str, got {type(v).__name__}")
        if len(v.encode("utf-8")) > max_bytes:
            raise ValueError(f"{what}[{i}] is longer than {max_bytes} bytes of UTF-8")
        out.append(str(v))
    return out


def spec_properties(spec_json: str) -> dict[str, str]:
    parts = [spec_json[i : i + SPEC_PART_CHARS] for i in range(0, len(spec_json), SPEC_PART_CHARS)] or [""]
    props = {f"{SPEC_KEY}_parts": str(len(parts))}
    props.update({f"{SPEC_KEY}_{i}": p for i, p in enumerate(parts)})
    return props


def spec_from_properties(props: dict) -> str:
    n = int(props.get(f"{SPEC_KEY}_parts", 0) or 0)
    try:
        return "".join(props[f"{SPEC_KEY}_{i}"] for i in range(n))
    except KeyError as exc:
        raise StoreError(f"the stored feature spec is incomplete (missing property {exc}); rebuild with --overwrite") from exc


def same_spec(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return json.loads(a) == json.loads(b)
    except ValueError:
        return False


def short(spec_json: str, limit: int = 160) -> str:
    return spec_json if len(spec_json) <= limit else spec_json[:limit] + "..."


def object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
