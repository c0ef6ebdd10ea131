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

    def as_dict(self) -> dict:
        return {"uri": self.uri, "collection": self.collection, "spec": self.spec}

    def __str__(self) -> str:
        return f"{self.uri} / {self.collection}"


def spec_digest(spec: FeatureSpec, *, fitted: bool = False) -> str:
    """16 hex of the SHA-256 of the spec's recipe (with the fitted statistics when ``fitted``)."""
    d = spec.to_dict() if fitted else spec.recipe()
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
