"""The one damage-and-reconstruct step (cbir_dist.damage.hook): its values, its halves, its masks and its fallback."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbir_dist.damage.hook import DamageConfig, DamageTransform, NetworkStage, damage_record
from cbir_dist.damage.inpaint import get_inpainter
from cbir_dist.damage.masks import apply_mask, fringe_mask
from cbir_dist.errors import UsageError
from cbir_dist.io.records import OK, REJECTED, Record


def _image(h=40, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_damage_returns_the_damaged_and_reconstructed_images_as_values():
    img = _image()
    step = DamageTransform(DamageConfig(fringe=3.0, inpainter="telea"))
    out = step.damage(img, "a.png")
    known = fringe_mask(40, 48, 3.0, 0.25)
    np.testing.assert_array_equal(out.damaged, apply_mask(img, known))
    np.testing.assert_array_equal(out.reconstructed, get_inpainter("telea")(apply_mask(img, known), known))
    np.testing.assert_array_equal(step(img, "a.png"), out.reconstructed)  # the index's hook: the same image
    prepared, mask = step.prepare(img, "a.png")  # a classical inpainter runs whole in the CPU half
    assert mask is None and np.array_equal(prepared, out.reconstructed)
    assert not np.array_equal(out.damaged, out.reconstructed)


def test_damage_record_keeps_the_image_as_read_and_rejects_a_failure(tmp_path):
    img = _image()
    rec = Record("q.png", "x", image=img.copy())
    out = damage_record(rec, DamageTransform(DamageConfig(fringe=3.0, inpainter="none")))
    assert rec.status == OK and np.array_equal(rec.image, img)
    assert np.array_equal(out.reconstructed, out.damaged) and not np.array_equal(out.damaged, img)
    intact = damage_record(rec, None)
    assert intact.damaged is rec.image and intact.reconstructed is rec.image
    missing = Record(str(tmp_path / "q.png"), "x", image=img)
    (tmp_path / "m").mkdir()  # a masks folder without this image's mask
    assert damage_record(missing, DamageTransform(DamageConfig(masks_dir=str(tmp_path / "m")))) is None
    assert missing.status == REJECTED and missing.error.startswith("mask/inpaint failed: no mask for")


def test_masks_are_found_under_each_images_own_folder(tmp_path):
    for folder, col in (("one", 10), ("two", 30)):
        (tmp_path / "m" / "cls").mkdir(parents=True, exist_ok=True)
        mask = np.full((40, 48), 255, np.uint8)
        mask[:, :col] = 0
        Image.fromarray(mask).save(tmp_path / "m" / "cls" / f"{folder}.png")
    paths = {str(tmp_path / "q1" / "cls" / "one.png"): str(tmp_path / "q1"),
             str(tmp_path / "q2" / "cls" / "two.png"): str(tmp_path / "q2")}
    step = DamageTransform(DamageConfig(masks_dir=str(tmp_path / "m")), roots=paths)
    img = _image()
    missing = {p: int((~step.known(img, p)).sum()) for p in paths}
    assert sorted(missing.values()) == [10 * 40, 30 * 40]


def test_an_unknown_inpainter_is_a_usage_error_before_any_image():
    with pytest.raises(UsageError, match="--inpainter 'deepfill' is unknown; choose one of .*telea"):
        DamageConfig(fringe=2.0, inpainter="deepfill")


class _Flaky(NetworkStage):
    """A network half that fails on any batch holding an image 13 pixels high."""

    def __init__(self):
        super().__init__("two-stage")
        self.calls = []

    def refine(self, prefilled, known, originals=None):
        self.calls.append(len(prefilled))
        if any(p.shape[0] == 13 for p in prefilled):
            raise ValueError("bad size")
        return [p + 1 for p in (originals if originals is not None else prefilled)]


def test_refine_each_retries_a_failed_batch_one_image_at_a_time():
    stage = _Flaky()
    good = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 5, np.uint8)]
    out = stage.refine_each(good, [None, None])
    assert stage.calls == [2] and [int(o.max()) for o in out] == [1, 6]  # one call for a good batch
    stage.calls.clear()
    batch = [good[0], np.zeros((13, 8, 3), np.uint8), good[1]]
    out = stage.refine_each(batch, [None] * 3, originals=[b + 10 for b in batch])
    assert stage.calls == [3, 1, 1, 1]
    assert isinstance(out[1], ValueError) and "bad size" in str(out[1])
    assert int(out[0].max()) == 11 and int(out[2].max()) == 16  # the others refined, with their originals
