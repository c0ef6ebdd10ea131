"""What run state vouches for: a collection of a store, built with one feature recipe."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..features.spec import FeatureSpec


@dataclass(frozen=True)
class Target:
    """What run state vouches for: a collection of a store, built with one feature recipe."""

    uri: str  # normalised, without credentials
    collection: str
    spec: str  # digest of the feature spec's recipe (fitted statistics excluded)
    #: the collection's identity (``VectorStore.identity``): "" before it exists or for one made
    #: before identities; a collection made anew, or swapped in by ``--overwrite``, has another
    identity: str = ""

    def as_dict(self) -> dict:
        return {"uri": self.uri, "collection": self.collection, "spec": self.spec, "identity": self.identity}

    def vouched_by(self, recorded, *, identity: bool = True) -> bool:
        """Whether run state that recorded ``recorded`` (an :meth:`as_dict`) vouches for this target.

        ``identity=False`` for state that vouches for computed features, not for rows of this very
        collection (a fitted spec's shard markers). State recorded before identities counts as "".
        """
        if not isinstance(recorded, dict):
            return False
        mine, theirs = self.as_dict(), {"identity": "", **recorded}
        if not identity:
            mine.pop("identity"), theirs.pop("identity")
        return mine == theirs

    def __str__(self) -> str:
        return f"{self.uri} / {self.collection}"


def spec_digest(spec: FeatureSpec, *, fitted: bool = False) -> str:
    """16 hex of the SHA-256 of the spec's recipe (with the fitted statistics when ``fitted``)."""
    d = spec.to_dict() if fitted else spec.recipe()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
