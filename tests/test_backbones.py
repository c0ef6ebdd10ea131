"""Deep feature backbones: shapes, determinism, preprocessing, weights loading and its errors.

Unit tests use ``weights="random"`` at 32 px on the CPU; nothing here touches the network (the
downloader is replaced by one that fails). Integration tests use the ImageNet files in ../shared.
"""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request

import numpy as np
import pytest
from conftest import shared_path

from cbir_dist.errors import WeightsError
from cbir_dist.features import backbones as bb
from cbir_dist.features import weights as weights_mod
from cbir_dist.features.backbones import (
    BACKBONES,
    feature_dim,
    load_backbone,
    preprocess,
)

SIZE = 32  # the smallest input every backbone takes: keeps CPU tests fast
HINTS = ("TORCH_HOME", "--weights PATH", "--backbone none")


@pytest.fixture(scope="module")
def random_backbone():
    """Random-weight torch backbones at 32 px (their ``model`` is the torch module), loaded once per
    name for the module; tests/test_backbone_runtime.py compares ONNX Runtime's with them."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_backbone(name, "random", device="cpu", image_size=SIZE, batch_size=8, runtime="torch")
        return cache[name]

    return get


def _images(seed: int, n: int = 2) -> list[np.ndarray]:
    """``n`` small RGB images of different sizes: gradients plus noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 40 + 13 * i, 56 + 7 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, ((xx + yy) * (seed + 1) * 5) % 256], axis=2)
        out.append(np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download weights fails at once, as it would offline."""
    calls = []

    def fail(url, dest, **kw):
        calls.append((url, dest))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(weights_mod, "_download", fail)
    return calls


# --------------------------------------------------------------------------- names and dims


def test_feature_dims():
    assert [feature_dim(n) for n in BACKBONES] == [2048, 512, 512, 1280]
    assert feature_dim("vgg16", "fc7") == feature_dim("vgg19", "fc7") == 4096


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="resnet50, vgg16, vgg19, mobilenet_v2"):
        load_backbone("resnet18", "random")
    with pytest.raises(ValueError, match="resnet50"):
        feature_dim("alexnet")


def test_fc7_only_for_vgg():
    with pytest.raises(ValueError, match="choose one of pool"):
        load_backbone("resnet50", "random", head="fc7")


@pytest.mark.parametrize("kw", [{"image_size": 16}, {"batch_size": 0}, {"image_size": 64.5}])
def test_bad_sizes(kw):
    with pytest.raises(ValueError):
        load_backbone("mobilenet_v2", "random", **kw)


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize("name", BACKBONES)
def test_shape_dtype_determinism_and_discrimination(random_backbone, name):
    model = random_backbone(name)
    assert model.dim == feature_dim(name) and model.weights_desc == "random:seed0"
    assert str(model.device) == "cpu"
    imgs = _images(0)
    f = model(imgs)
    assert f.shape == (2, feature_dim(name)) and f.dtype == np.float32
    assert np.isfinite(f).all() and np.abs(f).sum() > 0
    np.testing.assert_array_equal(model(imgs), f)  # same input, same output
    # the two images differ, so must their features
    assert np.abs(f[0] - f[1]).max() > 1e-3 * np.abs(f).max()


def test_same_seed_same_model_other_seed_other_model(random_backbone):
    imgs = _images(1)
    again = load_backbone("mobilenet_v2", "random", device="cpu", image_size=SIZE, runtime="torch")
    np.testing.assert_array_equal(again(imgs), random_backbone("mobilenet_v2")(imgs))
    other = load_backbone("mobilenet_v2", "random", device="cpu", image_size=SIZE, seed=1)
    assert other.weights_desc == "random:seed1"
    assert not np.allclose(other(imgs), again(imgs))


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_batch_size_invariance(name):
    imgs = _images(2, n=3)
    one = load_backbone(name, "random", device="cpu", image_size=SIZE, batch_size=1)(imgs)
    three = load_backbone(name, "random", device="cpu", image_size=SIZE, batch_size=3)(imgs)
    scale = np.abs(three).max()
    np.testing.assert_allclose(one, three, rtol=0, atol=1e-5 * scale)
    # and a batch of 1 gives each image's own row, not the batch's
    np.testing.assert_allclose(one[2], three[2], rtol=0, atol=1e-5 * scale)


def test_array_list_and_grey_inputs(random_backbone):
    model = random_backbone("mobilenet_v2")
    imgs = _images(3)
    same = [im[:40, :56] for im in imgs]
    np.testing.assert_array_equal(model(np.stack(same)), model(same))
    grey = imgs[0][:, :, 0]
    np.testing.assert_array_equal(model([grey]), model([np.repeat(grey[:, :, None], 3, axis=2)]))
    assert model([]).shape == (0, 1280)


def test_input_validation(random_backbone):
    model = random_backbone("mobilenet_v2")
    img = _images(4, n=1)[0]
    with pytest.raises(TypeError, match="img_as_ubyte"):
        model([img.astype(np.float32) / 255])
    with pytest.raises(ValueError, match=r"\[image\]"):
        model(img)  # one (H, W, 3) array, not a batch
    with pytest.raises(ValueError, match="alpha"):
        model([np.zeros((32, 32, 4), np.uint8)])


# --------------------------------------------------------------------------- preprocessing


def test_preprocess_geometry_matches_area_mean():
    # 512 x 600 -> shorter side 256 (exact factor 2: INTER_AREA = 2x2 block mean) -> 256 x 300,
    # centre crop 224: top round(32 / 2) = 16, left round(76 / 2) = 38
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (512, 600, 3), dtype=np.uint8)
    out = preprocess([img], 224)
    assert out.shape == (1, 224, 224, 3) and out.dtype == np.uint8
    half = img.reshape(256, 2, 300, 2, 3).astype(np.float64).mean(axis=(1, 3))
    want = half[16 : 16 + 224, 38 : 38 + 224]
    assert np.abs(out[0] - want).max() <= 0.5 + 1e-9


def test_preprocess_close_to_torchvision():
    import torch
    from torchvision.transforms import v2

    img = _images(6, n=1)[0]
    img = np.ascontiguousarray(np.kron(img, np.ones((5, 5, 1), np.uint8))[:, 3:])  # 200 x 277, smooth-ish
    ours = preprocess([img], 96)[0].astype(np.float64)
    tv = v2.Compose([v2.Resize(bb.resize_size(96), antialias=True), v2.CenterCrop(96)])
    theirs = tv(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy().astype(np.float64)
    assert ours.shape == theirs.shape == (96, 96, 3)
    assert np.abs(ours - theirs).mean() < 3.0  # area vs antialiased bilinear: a few grey levels


def test_upscales_small_images():
    out = preprocess([np.full((20, 30, 3), 7, np.uint8)], 64)
    assert out.shape == (1, 64, 64, 3) and (out == 7).all()


# --------------------------------------------------------------------------- weights files


def _save_vgg_features(tmp_path, random_backbone, wrap=None):
    import torch

    sd = random_backbone("vgg16").model.state_dict()
    assert sd and all(k.startswith("features.") for k in sd)
    obj = sd if wrap is None else wrap(sd)
    path = tmp_path / "vgg16_features.pth"
    torch.save(obj, path)
    return path, sd


@pytest.mark.parametrize(
    "wrap",
    [None, lambda sd: {"state_dict": sd}, lambda sd: {"module." + k: v for k, v in sd.items()}],
    ids=["plain", "state_dict-key", "module-prefix"],
)
def test_vgg_features_state_dict_round_trip(tmp_path, random_backbone, wrap):
    path, _ = _save_vgg_features(tmp_path, random_backbone, wrap)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_backbone("vgg16", path, device="cpu", image_size=SIZE, sha256=digest.upper(), runtime="torch")
    assert loaded.weights_desc == f"file:{digest[:16]}" and loaded.dim == 512
    imgs = _images(7)
    np.testing.assert_array_equal(loaded(imgs), random_backbone("vgg16")(imgs))


def test_missing_file_error_names_the_ways_out(tmp_path):
    with pytest.raises(WeightsError, match="does not exist") as ei:
        load_backbone("vgg16", tmp_path / "nope.pth", device="cpu")
    for hint in HINTS:
        assert hint in str(ei.value)


def test_sha256_mismatch_names_both_hashes(tmp_path, random_backbone):
    path, _ = _save_vgg_features(tmp_path, random_backbone)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(WeightsError) as ei:
        load_backbone("vgg16", path, device="cpu", sha256="ab" * 32)
    assert digest in str(ei.value) and "ab" * 32 in str(ei.value)


def test_missing_features_key_fails(tmp_path, random_backbone):
    import torch

    path, sd = _save_vgg_features(tmp_path, random_backbone)
    del sd["features.28.bias"]
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"features\.28\.bias"):
        load_backbone("vgg16", path, device="cpu")


def test_other_architecture_fails(tmp_path, random_backbone):
    import torch

    path = tmp_path / "mnv2.pth"
    torch.save(random_backbone("mobilenet_v2").model.state_dict(), path)
    with pytest.raises(WeightsError, match="lacks"):
        load_backbone("vgg16", path, device="cpu")
    sd = random_backbone("vgg16").model.state_dict() | {"head.weight": torch.zeros(2)}
    torch.save(sd, path)
    with pytest.raises(WeightsError, match="another architecture"):
        load_backbone("vgg16", path, device="cpu")


def test_fc7_needs_classifier_weights(tmp_path, random_backbone):
    path, _ = _save_vgg_features(tmp_path, random_backbone)
    with pytest.raises(WeightsError, match=r"classifier\.0\.weight"):
        load_backbone("vgg16", path, device="cpu", head="fc7")


def test_fc7_random_is_4096():
    model = load_backbone("vgg16", "random", device="cpu", image_size=SIZE, head="fc7")
    f = model(_images(8))
    assert model.dim == 4096 and f.shape == (2, 4096)
    assert (f >= 0).all() and (f > 0).any()  # fc7 after its ReLU


def test_corrupt_file_fails(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="not a loadable"):
        load_backbone("mobilenet_v2", path, device="cpu")


# --------------------------------------------------------------------------- imagenet (no network)


def test_imagenet_offline_raises_quickly(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as ei:
        load_backbone("resnet50", "imagenet", device="cpu")
    for hint in HINTS:
        assert hint in str(ei.value)
    assert "URLError" in str(ei.value)
    [(url, dest)] = no_network
    assert url.endswith("/resnet50-11ad3fa6.pth")
    assert dest == tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"


def test_corrupt_cached_file_is_detected(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(WeightsError, match="corrupt.*b0353104"):
        load_backbone("mobilenet_v2", "imagenet", device="cpu")
    assert no_network == []  # the cached file was used, nothing downloaded


class _FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# the autouse fixture replaces weights._download; keep a handle on the real one for its own test
_real_download = weights_mod._download


@pytest.mark.parametrize("good", [True, False])
def test_download_checks_hash_and_is_atomic(tmp_path, monkeypatch, good):
    payload = b"weights" * 1000
    prefix = hashlib.sha256(payload).hexdigest()[:8] if good else "deadbeef"
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _FakeResponse(payload))
    dest = tmp_path / "ck" / f"net-{prefix}.pth"
    if good:
        _real_download(f"https://example.invalid/{dest.name}", dest)
        assert dest.read_bytes() == payload
    else:
        with pytest.raises(WeightsError, match="deadbeef"):
            _real_download(f"https://example.invalid/{dest.name}", dest)
        assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == ([dest.name] if good else [])  # no .partial left


# --------------------------------------------------------------------------- real weights (../shared)


def _expected_sha(rel: str) -> str:
    sums = shared_path("weights", "SHA256SUMS").read_text().split("\n")
    return next(line.split()[0] for line in sums if line.strip().endswith(rel))


def _crops_and_others():
    from cbir_dist.io.files import list_images
    from cbir_dist.io.images import read_image

    files = list_images(shared_path("data", "wang1000"))
    first = {}
    for f in files:
        first.setdefault(f.label, f.path)
    photo = read_image(first["africans"])
    h, w = photo.shape[:2]
    crops = [photo[: h * 7 // 8, : w * 7 // 8], photo[h // 8 :, w // 8 :]]
    others = [read_image(first[c]) for c in ("beaches", "buses", "dinosaurs")]
    return crops, others


def _assert_crops_closer(model):
    crops, others = _crops_and_others()
    f = model(crops + others)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    same = 1 - f[0] @ f[1]
    for j in range(2, len(f)):
        assert same < 1 - f[0] @ f[j] and same < 1 - f[1] @ f[j]


@pytest.mark.integration
def test_mobilenet_v2_imagenet_from_shared_cache(monkeypatch):
    rel = "torch/hub/checkpoints/mobilenet_v2-b0353104.pth"
    cached = shared_path("weights", *rel.split("/"))
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == _expected_sha(rel)
    monkeypatch.setenv("TORCH_HOME", str(shared_path("weights", "torch")))
    model = load_backbone("mobilenet_v2", "imagenet", device="cpu", batch_size=8)
    assert model.dim == 1280 and model.weights_desc == "imagenet:IMAGENET1K_V1"
    _assert_crops_closer(model)


@pytest.mark.integration
def test_vgg16_features_file_from_shared():
    path = shared_path("weights", "vgg16_features_imagenet.pth")
    sha = _expected_sha("vgg16_features_imagenet.pth")
    model = load_backbone("vgg16", path, sha256=sha, device="cpu", image_size=128)
    assert model.dim == 512 and model.weights_desc == f"file:{sha[:16]}"
    _assert_crops_closer(model)


@pytest.mark.integration
def test_mobilenet_v2_matches_torchvision_reference(monkeypatch):
    """Our preprocessing + cut model give torchvision's own pipeline's pooled features."""
    import cv2
    import torch
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    shared_path("weights", "torch", "hub", "checkpoints", "mobilenet_v2-b0353104.pth")
    monkeypatch.setenv("TORCH_HOME", str(shared_path("weights", "torch")))
    crops, others = _crops_and_others()
    # sizes that need real resizing: shrink, enlarge, and a tall image
    imgs = [cv2.resize(others[0], (400, 333)), cv2.resize(others[1], (200, 180)), crops[0].transpose(1, 0, 2)[:, :150]]
    w = MobileNet_V2_Weights.IMAGENET1K_V1
    ref = mobilenet_v2(weights=w).eval()
    x = torch.stack([w.transforms()(torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1)) for i in imgs])
    with torch.inference_mode():
        want = torch.nn.functional.adaptive_avg_pool2d(ref.features(x), 1).flatten(1).numpy()
    got = load_backbone("mobilenet_v2", "imagenet", device="cpu")(imgs)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert (cos > 0.99).all(), cos
