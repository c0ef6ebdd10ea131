"""Mask-estimator weights for tests, trained on nothing: a MaskNet whose weights are set by hand.

``save_dark_estimator(path)`` writes ``path`` (a MaskNet state dict) and its provenance JSON beside
it, as ``cbir-dist train-mask-estimator`` does, so :func:`cbir_dist.damage.detect.load_estimator` takes
it like the shipped weights (sha256 checked, ONNX export on the CPU). The network marks a pixel
missing exactly when it is black (its channels sum to at most DARK_SUM), the way damage that is
zero-filled looks, and nothing else: the tests know what it will find. Point
``$CBIR_MASK_ESTIMATOR_WEIGHTS`` at the file and every process a job starts loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

#: a pixel whose channels sum to at most this many levels (of 3 x 255) is found missing
DARK_SUM = 38


def save_dark_estimator(path: str | Path) -> Path:
    """Write the black-pixel MaskNet to ``path`` (.pt) and its provenance JSON; returns ``path``."""
    import torch

    from cbir_dist.damage.detect_net import DEFAULT_CONFIG, build_model
    from cbir_dist.io.files import sha256_file

    path = Path(path)
    model = build_model(DEFAULT_CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # stem, channel 0: relu(-(r + g + b) - bias) > 0 only for near-black pixels (inputs in [-1, 1])
        stem1, stem2 = model.enc[0][0], model.enc[0][2]
        stem1.weight[0, :, 1, 1] = -1.0
        stem1.bias[0] = (DARK_SUM + 0.5) / 127.5 - 3.0  # > 0 for a channel sum up to DARK_SUM
        stem2.weight[0, 0, 1, 1] = 1e4  # passes channel 0 on, scaled: the logit is far from 0 either way
        # every deeper level and the upsampling add zeros; the last decoder block passes channel 0 on
        for layer in model.dec[-1]:
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight[0, 0, 1, 1] = 1.0
        model.head.weight[0, 0, 0, 0] = 1.0
        model.head.bias[0] = -1.0  # logit -1 (known) where channel 0 is 0
    torch.save(model.state_dict(), path)
    meta = {"model": {"architecture": "MaskNet", "config": dict(DEFAULT_CONFIG)},
            "note": "test weights set by hand: black pixels are missing", "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


# ------------------------------------------------------------------ fixtures (import them into a test module)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def dark_weights(tmp_path_factory) -> Path:
    """The black-pixel estimator's weights (``.pt`` + ``.json``), written once per session."""
    return save_dark_estimator(tmp_path_factory.mktemp("mask_estimator") / "mask_estimator.pt")


@pytest.fixture(scope="session")
def _dark_loaded(dark_weights):
    from cbir_dist.damage.detect import load_estimator

    return load_estimator(dark_weights)


@pytest.fixture
def dark_estimator(dark_weights, _dark_loaded, monkeypatch) -> Path:
    """``--detect-mask`` finds the black pixels: ``$CBIR_MASK_ESTIMATOR_WEIGHTS`` names the weights (for the
    processes a job starts) and this process's estimator is the one loaded from them; returns the weights."""
    from cbir_dist.damage import detect

    monkeypatch.setenv(detect.WEIGHTS_ENV, str(dark_weights))
    monkeypatch.setattr(detect, "_ESTIMATOR", _dark_loaded)
    return dark_weights


@pytest.fixture
def no_estimator(tmp_path, monkeypatch) -> None:
    """No mask estimator weights anywhere: no variable, and the shipped file absent."""
    from cbir_dist.damage import detect

    monkeypatch.delenv(detect.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(detect, "DEFAULT_WEIGHTS", tmp_path / "absent" / "mask_estimator.pt")
    monkeypatch.setattr(detect, "_ESTIMATOR", None)
