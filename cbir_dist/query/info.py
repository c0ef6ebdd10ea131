"""`cbir-dist info`: what a store and a collection hold, as facts for people (text) and scripts (JSON).

For a collection: its feature spec (blocks, their dims, weights and norms, the fusion mode, the
backbone and the identity of its weights), its row count, its index type and build parameters,
the index runs recorded against it (newest last; each with what ran its backbone, e.g. ONNX
Runtime or torch on CUDA) and, for milvus-lite, the size on disk of the
store's folder. Without a collection: the collections of the store.

A milvus-lite folder can be open in one process at a time, so the store is opened, read and closed
before anything is formatted: ``info`` holds the folder's lock only while it asks.
"""

from __future__ import annotations

import json
import os

from ..errors import CbirError, CollectionNotFoundError
from ..features.spec import DEEP, FeatureSpec
from ..store import lite


def folder_bytes(path: str | os.PathLike) -> int:
    """Total bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path, followlinks=False):
        for fn in files:
            try:
                st = os.lstat(os.path.join(dirpath, fn))
            except OSError:
                continue
            if not os.path.islink(os.path.join(dirpath, fn)):
                total += st.st_size
    return total


def _spec_facts(spec_json: str) -> dict:
    from ..features.weights import imagenet_weights_name

    try:
        spec = FeatureSpec.from_json(spec_json)
    except CbirError as exc:
        return {"spec_error": str(exc)}
    blocks = [{"name": b.name, "dim": b.dim, "weight": b.weight, "norm": b.norm, "params": dict(b.params),
               "fitted": b.mean is not None} for b in spec.blocks]
    facts = {"fusion": spec.mode, "profile": spec.profile or None, "blocks": blocks,
             "backbone": None}
    deep = spec.deep
    if deep is not None:
        p = dict(deep.params)
        weights = str(p.get("weights", ""))
        facts["backbone"] = {
            "name": p.get("backbone"), "weights": weights, "image_size": p.get("image_size"),
            "weights_sha256": p.get("sha256"),
            "torchvision_weights": imagenet_weights_name(str(p.get("backbone"))) if weights == "imagenet" else None,
        }
    return facts


def store_info(db: str, collection: str | None = None, *, token: str | None = None) -> dict:
    """The facts ``cbir-dist info`` prints, as a JSON-able dict (see the module doc).

    Raises :class:`~cbir_dist.errors.InputError` when a milvus-lite folder does not exist or the
    collection is not in the store, :class:`~cbir_dist.errors.StoreError` when the store cannot be opened.
    """
    from ..store import VectorStore

    local = lite.lite_path(db)
    lite.require_existing(db)
    facts: dict = {"db": db, "store": "milvus-lite" if local else "milvus server"}
    with VectorStore(db, collection or "images", token=token) as store:  # closed (lock released) on leaving
        names = store.list_collections()
        facts["collections"] = names
        if collection is not None:
            if collection not in names:
                there = (f"it holds {', '.join(map(repr, names))}: pick one with --collection, or leave "
                         "--collection out to list them" if names else
                         f"it holds no collection: index one first with `cbir-dist index IMAGES_DIR --db {db}`")
                raise CollectionNotFoundError(f"collection {collection!r} not found in {db} ({there})")
            facts["collection"] = collection
            facts["rows"] = store.count()
            facts["dim"] = store.dim()
            spec_json = store.spec_json()
            facts["index"] = store.index_params()
            facts["runs"] = store.runs()
    if collection is not None:
        facts.update(_spec_facts(spec_json))
    if local is not None:
        facts["disk_bytes"] = folder_bytes(local)
        facts["disk_path"] = local
    return facts


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} B"


def format_info(facts: dict) -> str:
    """The facts as text for people."""
    lines = [f"store       {facts['db']} ({facts['store']})"]
    if "disk_bytes" in facts:
        n = len(facts["collections"])
        lines.append(f"on disk     {_size(facts['disk_bytes'])} ({facts['disk_bytes']} bytes, the whole folder: "
                     f"{n} collection{'s' if n != 1 else ''})")
    if "collection" not in facts:
        names = facts["collections"]
        lines.append(f"collections {len(names)}" + (": " + ", ".join(names) if names else ""))
        if names:
            lines.append(f"            (cbir-dist info --db {facts['db']} --collection NAME for one of them)")
        return "\n".join(lines)
    lines.append(f"collection  {facts['collection']}")
    lines.append(f"rows        {facts['rows']}")
    if "spec_error" in facts:
        lines.append(f"spec        unreadable: {facts['spec_error']}")
    else:
        lines.append(f"vectors     {facts['dim']}-d, fusion {facts['fusion']}"
                     + (f", profile {facts['profile']}" if facts.get("profile") else ""))
        bb = facts.get("backbone")
        if bb:
            ident = bb["weights"] + (f" = torchvision {bb['torchvision_weights']}" if bb.get("torchvision_weights") else "")
            if bb.get("weights_sha256"):
                ident += f", sha256 {bb['weights_sha256']}"
            lines.append(f"backbone    {bb['name']} at {bb['image_size']} px, weights {ident}")
        else:
            lines.append("backbone    none (handcrafted descriptors only)")
        lines.append("blocks      " + f"{'name':<14} {'dim':>5} {'weight':>7}  norm         params")
        for b in facts["blocks"]:
            params = {k: v for k, v in b["params"].items() if b["name"] != DEEP or k not in ("backbone", "weights",
                                                                                               "image_size", "sha256")}
            lines.append(f"            {b['name']:<14} {b['dim']:>5} {b['weight']:>7g}  {b['norm']:<12} "
                         + (json.dumps(params, sort_keys=True) if params else "-")
                         + ("  (fitted on the collection)" if b["fitted"] else ""))
    idx = facts["index"]
    lines.append(f"index       {idx['index_type']} "
                 + (json.dumps(idx["params"], sort_keys=True) if idx["params"] else "(default parameters)"))
    runs = facts["runs"]
    lines.append(f"runs        {len(runs)} recorded" + (" (newest last)" if runs else ""))
    for r in runs:
        lines.append(f"            {r.get('finished', '?')}  {r.get('backend', '?')}@{r.get('host', '?')}  "
                     f"files {r.get('files', '?')}, indexed {r.get('indexed', '?')}, duplicates "
                     f"{r.get('duplicates', '?')}, rejected {r.get('rejected', '?')}  from {r.get('images_dir', '?')}"
                     + (f"  backbone on {r['runtime']}" if r.get("runtime") else "")
                     + (f"  {_damage_text(r['damage'])}" if isinstance(r.get("damage"), dict) else ""))
    return "\n".join(lines)


def _damage_text(damage: dict) -> str:
    """A run's damage step in a few words: how its images were damaged and reconstructed."""
    if damage.get("fringe") is not None:
        source = f"fringe {damage['fringe']:g} Hz"
    elif damage.get("masks"):
        source = f"masks from {damage['masks']}"
    else:
        source = ""
    parts = [f"damaged by {source}"] if source else []
    if damage.get("detect_mask"):
        parts.append("masks estimated (--detect-mask)")
    parts.append(f"inpainter {damage.get('inpainter', '?')}")
    return ", ".join(parts)


def info_json(facts: dict) -> str:
    return json.dumps(facts, indent=2, sort_keys=True, default=str)


__all__ = ["folder_bytes", "format_info", "info_json", "store_info"]
