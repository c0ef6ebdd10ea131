import io
import os

import numpy as np
import pytest
from PIL import Image

from cbir_dist.errors import ImageDecodeError, InputError
from cbir_dist.io.files import content_id, list_images
from cbir_dist.io.images import decode_image, read_image
from cbir_dist.io.records import DUPLICATE, OK, REJECTED, mark_duplicates, read_record


def _encode(arr, fmt, mode=None, **kw):
    buf = io.BytesIO()
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_content_id_is_stable_positive_int64():
    a, b = content_id(b"abc"), content_id(b"abc")
    assert a == b and 0 <= a < 2**63 and a != content_id(b"abd")


@pytest.mark.parametrize("fmt, mode", [("PNG", None), ("JPEG", None), ("BMP", None), ("GIF", None),
                                       ("TIFF", None), ("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "CMYK"),
                                       ("PNG", "P")])
def test_decodes_formats_and_modes_to_rgb_uint8(rgb_image, fmt, mode):
    out = decode_image(_encode(rgb_image, fmt, mode))
    assert out.dtype == np.uint8 and out.shape == rgb_image.shape


def test_sixteen_bit_grey_is_scaled():
    arr = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = decode_image(buf.getvalue())
    assert out.shape == (32, 32, 3) and out.max() == 255 and out.min() == 0


def test_rgba_transparent_pixels_become_white():
    arr = np.zeros((20, 20, 4), np.uint8)
    out = decode_image(_encode(arr, "PNG"))
    assert (out == 255).all()


@pytest.mark.parametrize("data, msg", [(b"", "empty"), (b"not an image at all", "not a readable image")])
def test_bad_bytes_raise(data, msg):
    with pytest.raises(ImageDecodeError, match=msg):
        decode_image(data)


def test_truncated_and_small_and_bomb(rgb_image):
    png = _encode(rgb_image, "PNG")
    with pytest.raises(ImageDecodeError):
        decode_image(png[: len(png) // 2])
    with pytest.raises(ImageDecodeError, match="smaller than"):
        decode_image(_encode(rgb_image[:10, :10], "PNG"))
    with pytest.raises(ImageDecodeError, match="exceeds the limit"):
        decode_image(png, max_pixels=100)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read"):
        read_image(tmp_path / "nope.png")


def test_list_images_labels_by_parent_and_records(tmp_path, rgb_image):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    png = _encode(rgb_image, "PNG")
    (tmp_path / "cats" / "a.png").write_bytes(png)
    (tmp_path / "dogs" / "b.PNG").write_bytes(png)  # same bytes: a duplicate
    (tmp_path / "dogs" / "notes.txt").write_text("x")
    (tmp_path / "dogs" / "empty.jpg").write_bytes(b"")
    os.symlink(tmp_path / "gone.png", tmp_path / "dogs" / "broken.png")
    files = list_images(tmp_path)
    assert [(os.path.basename(f.path), f.label) for f in files] == [
        ("a.png", "cats"), ("b.PNG", "dogs"), ("broken.png", "dogs"), ("empty.jpg", "dogs")]
    recs = [read_record(f) for f in files]
    mark_duplicates(recs)
    assert [r.status for r in recs] == [OK, DUPLICATE, REJECTED, REJECTED]
    assert "a.png" in recs[1].error and "symlink" in recs[2].error and "empty" in recs[3].error
    assert recs[0].id == recs[1].id == content_id(png)


def test_list_images_missing_dir(tmp_path):
    with pytest.raises(InputError):
        list_images(tmp_path / "nope")


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(orientation):
    """A phone photo stored sideways with an EXIF orientation is decoded upright, as viewers show it."""
    import io

    from PIL import Image, ImageOps

    arr = np.zeros((20, 30, 3), np.uint8)
    arr[:5, :10] = 255  # a white corner shows which way is up
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif)
    got = decode_image(buf.getvalue())
    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))).convert("RGB"))
    assert np.array_equal(got, want)
    assert got.shape == ((30, 20, 3) if orientation in (6, 8) else (20, 30, 3))
