"""Two-stage inpainter: model contract, region-wise convolution, losses, training loop, checkpoints, shipped weights."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: E402

from cbir_dist.damage.inpaint import two_stage  # noqa: E402
from cbir_dist.damage.inpaint.two_stage import (  # noqa: E402
    TwoStageInpainter,
    build_two_stage,
    load_two_stage,
)
from cbir_dist.damage.masks import fringe_mask  # noqa: E402
from cbir_dist.errors import WeightsError  # noqa: E402
from cbir_dist.training import losses  # noqa: E402
from cbir_dist.training.checkpoints import (
    export_weights,  # noqa: E402
    load_checkpoint,  # noqa: E402
    save_checkpoint,  # noqa: E402
)
from cbir_dist.training.config import TrainConfig  # noqa: E402
from cbir_dist.training.data import (
    read_split_file,  # noqa: E402
    sample_batch,  # noqa: E402
    split_dataset,  # noqa: E402
    to_tensors,  # noqa: E402
    write_split_file,  # noqa: E402
)
from cbir_dist.training.history import PLOT_NAME  # noqa: E402
from cbir_dist.training.job import train_inpainter  # noqa: E402
from cbir_dist.training.loop import run_training_loop  # noqa: E402

torch.set_num_threads(1)


def smooth_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ph = rng.uniform(0, 2 * np.pi, 3)
    chans = [
        128 + 90 * np.sin(xx / w * 2 * np.pi + ph[0]),
        128 + 90 * np.cos(yy / h * 2 * np.pi + ph[1]),
        128 + 60 * np.sin((xx + yy) / (h + w) * 2 * np.pi + ph[2]),
    ]
    return np.clip(np.stack(chans, 2), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return TwoStageInpainter(build_two_stage(width=8).eval(), torch.device("cpu"))


# --------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("shape", [(32, 48), (37, 53), (9, 70)])
def test_output_shape_dtype_and_known_pixels_exact(tiny_net, rng, shape):
    h, w = shape
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) > 0.3
    out = tiny_net(img, mask)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask], img[mask])
    assert not np.array_equal(out[~mask], np.zeros_like(img[~mask]))  # holes were filled, not left black
    assert tiny_net.name == "two-stage"


@pytest.mark.parametrize("shape", [(24, 40), (24, 40, 1)])
def test_grey_images(tiny_net, rng, shape):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    mask = rng.random((24, 40)) > 0.4
    out = tiny_net(img, mask)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask], img[mask])


def test_registry_builds_two_stage(tmp_path, image_set):
    from cbir_dist.damage.inpaint import get_inpainter

    cfg = _cfg(image_set, tmp_path / "run", steps=1, checkpoint_every=1)
    run_training_loop(cfg)
    export_weights(cfg.checkpoint_path, tmp_path / "w.pt")
    inp = get_inpainter("two-stage", weights=tmp_path / "w.pt", device="cpu")
    assert inp.name == "two-stage"
    img = smooth_image(16, 24)
    mask = fringe_mask(16, 24, 2.0)
    np.testing.assert_array_equal(inp(img, mask)[mask], img[mask])


def test_large_image_runs_downscaled(rng):
    torch.manual_seed(0)
    inp = TwoStageInpainter(build_two_stage(width=8).eval(), torch.device("cpu"), max_side=32)
    img = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)
    mask = fringe_mask(50, 90, 2.0)
    out = inp(img, mask)
    assert out.shape == img.shape
    np.testing.assert_array_equal(out[mask], img[mask])
    with pytest.raises(ValueError, match="max_side"):
        TwoStageInpainter(inp.model, torch.device("cpu"), max_side=4)


def test_all_known_returns_copy(tiny_net, rgb_image):
    out = tiny_net(rgb_image, np.ones(rgb_image.shape[:2], bool))
    np.testing.assert_array_equal(out, rgb_image)
    assert out is not rgb_image


def test_forward_rejects_unpadded_size():
    net = build_two_stage(width=8)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 3, 30, 32), torch.ones(1, 1, 30, 32))


@pytest.mark.parametrize(
    "image, mask, err",
    [
        (np.zeros((16, 16, 3), np.float32), np.ones((16, 16), bool), TypeError),
        (np.zeros((16, 16, 2), np.uint8), np.ones((16, 16), bool), ValueError),
        (np.zeros((16, 16, 3), np.uint8), np.ones((16, 16), np.uint8), TypeError),
        (np.zeros((16, 16, 3), np.uint8), np.ones((16, 17), bool), ValueError),
    ],
)
def test_call_validates_inputs(tiny_net, image, mask, err):
    with pytest.raises(err):
        tiny_net(image, mask)


def test_width_validated():
    with pytest.raises(ValueError, match="width"):
        build_two_stage(width=7)


def test_region_conv_uses_separate_weights_per_region():
    conv = two_stage.RegionConv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.conv_known.weight.fill_(2.0)
        conv.conv_known.bias.fill_(0.0)
        conv.conv_missing.weight.fill_(-1.0)
        conv.conv_missing.bias.fill_(10.0)
    x = torch.full((1, 1, 8, 8), 3.0)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:5, 3:7] = 0
    y = conv(x, mask)
    known = mask.bool()
    assert torch.all(y[known] == 6.0)  # 2 * 3 + 0
    assert torch.all(y[~known] == 7.0)  # -1 * 3 + 10


def test_region_conv_stride_marks_windows_touching_holes_missing():
    conv = two_stage.RegionConv2d(1, 1, kernel_size=1, stride=2)
    with torch.no_grad():
        conv.conv_known.weight.zero_()
        conv.conv_known.bias.fill_(1.0)
        conv.conv_missing.weight.zero_()
        conv.conv_missing.bias.fill_(-1.0)
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 0, 0] = 0  # one missing pixel in the top-left 2x2 window
    y = conv(torch.zeros(1, 1, 8, 8), mask)
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == -1.0
    assert torch.all(y[0, 0].flatten()[1:] == 1.0)


def test_nonlocal_block_mixes_distant_positions():
    block = two_stage.NonLocalBlock(8)
    torch.nn.init.normal_(block.out.weight)
    x = torch.zeros(1, 8, 8, 8)
    x2 = x.clone()
    x2[..., 7, 7] = 5.0  # change one far corner
    d = (block(x2) - block(x))[..., 0, 0]
    assert d.abs().sum() > 0  # position (0, 0) sees (7, 7)


def test_parameter_count_is_small():
    n = two_stage.count_parameters(build_two_stage(32))
    assert 1_000_000 < n < 3_000_000


# -------------------------------------------------------------------------------------- losses
@pytest.fixture(scope="module")
def random_vgg():
    torch.manual_seed(0)
    return losses.vgg_features(None, layers=("relu1_2", "relu2_2"), pretrained=False)


def _pair(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(2, 3, size, size, generator=g)).clamp(-1, 1)
    m = (torch.rand(2, 1, size, size, generator=g) > 0.5).float()
    return a, b, m


def test_region_l1_zero_iff_equal_and_weights_regions():
    a, b, m = _pair()
    assert losses.region_l1(a, a, m) == 0
    assert losses.region_l1(b, a, m) > 0
    # hole weight only sees the hole: a difference confined to known pixels is invisible to it
    c = a + m * 0.5
    assert losses.region_l1(c, a, m, hole=1.0, valid=0.0) == 0
    assert losses.region_l1(c, a, m, hole=0.0, valid=1.0) > 0


def test_style_and_correlation_losses(random_vgg):
    a, b, _ = _pair(1)
    fa, fb = random_vgg(a), random_vgg(b)
    assert set(fa) == {"relu1_2", "relu2_2"}
    assert losses.style_loss(fa, fa) == 0
    assert losses.style_loss(fb, fa) > 0
    assert losses.correlation_loss(fa["relu2_2"], fa["relu2_2"]) == 0
    assert losses.correlation_loss(fb["relu2_2"], fa["relu2_2"]) > 0


def test_gram_and_correlation_matrix_by_hand():
    f = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # (1, 1, 2, 2)
    assert torch.allclose(losses.gram_matrix(f), torch.tensor([[[5.0 / 4]]]))
    f2 = torch.zeros(1, 2, 1, 2)
    f2[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    f2[0, :, 0, 1] = torch.tensor([1.0, 1.0])
    r = losses.correlation_matrix(f2)
    assert torch.allclose(r, torch.tensor([[[1.0, 2**-0.5], [2**-0.5, 1.0]]]), atol=1e-5)


def test_total_loss_zero_for_identical_and_positive_otherwise(random_vgg):
    a, b, m = _pair(2)
    w = losses.LossWeights()
    disc = losses.build_patch_discriminator(width=4)
    zero, terms = losses.total_loss(a, m, a, a, a, weights=w, vgg=random_vgg, correlation_layer="relu2_2")
    assert zero == 0 and terms["style"] == 0 and terms["correlation"] == 0
    pos, terms = losses.total_loss(a, m, b, b, b, weights=w, vgg=random_vgg, correlation_layer="relu2_2")
    assert pos > 0 and terms["style"] > 0 and terms["correlation"] > 0 and terms["l1_refined"] > 0
    _, terms = losses.total_loss(a, m, a, a, a, weights=losses.LossWeights(adversarial=0.1), discriminator=disc)
    assert "adversarial" in terms
    _, terms = losses.total_loss(a, m, a, a, a, weights=w, discriminator=disc)
    assert "adversarial" not in terms  # off by default


def test_hinge_losses():
    ones = torch.ones(4)
    assert losses.hinge_d_loss(ones, -ones) == 0  # confident and right
    assert losses.hinge_d_loss(-ones, ones) == 4
    assert losses.hinge_g_loss(ones) == -1


def test_loss_weights_validated():
    with pytest.raises(ValueError, match="style"):
        losses.LossWeights(style=-1)


def test_vgg_layers_validated():
    with pytest.raises(ValueError, match="relu"):
        losses.vgg_features(None, layers=("conv5_3",), pretrained=False)


def test_vgg_weights_sha_mismatch(tmp_path):
    bad = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  vgg.pth\n")
    with pytest.raises(WeightsError, match="sha256"):
        losses.vgg_features(bad)


@pytest.mark.integration
def test_shared_vgg_weights_load():
    from conftest import shared_path

    path = shared_path("weights", "vgg16_features_imagenet.pth")
    vgg = losses.vgg_features(path, layers=("relu1_2",))
    f = vgg(torch.zeros(1, 3, 16, 16))["relu1_2"]
    assert f.shape == (1, 64, 16, 16) and f.abs().sum() > 0


# ------------------------------------------------------------------------------------ training
def test_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    net = build_two_stage(width=8)
    img = np.stack([smooth_image(32, 32, s) for s in range(4)])
    masks = np.stack([fringe_mask(32, 32, f) for f in (0.5, 1.0, 2.0, 3.0)])
    x, m = to_tensors(img, masks, "cpu")
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        loss, _ = losses.total_loss(x, m, *net(x, m))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert np.mean(history[-5:]) < 0.7 * np.mean(history[:3])


def _write_images(root: Path, classes=("a", "b"), per_class=5, size=(40, 48)):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            from PIL import Image

            Image.fromarray(smooth_image(*size, seed=10 * ci + i)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def image_set(tmp_path):
    return _write_images(tmp_path / "data" / "setA")


def _cfg(image_set, out, **kw):
    base = dict(images_dirs=(str(image_set),), out=str(out), steps=4, batch_size=2, crop=32, width=8,
                cache_short_side=40, log_every=1, checkpoint_every=2, val_every=2, val_max_images=2,
                style_weight=0.0, correlation_weight=0.0, warmup_steps=1, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_split_is_deterministic_disjoint_and_per_class(tmp_path):
    root = _write_images(tmp_path / "d" / "s1", classes=("x", "y"), per_class=20)
    train, val = split_dataset([root], 0.1, seed=0)
    assert len(val) == 4 and len(train) == 36 and not set(train) & set(val)
    assert sum(p.startswith("s1/x/") for p in val) == 2
    assert split_dataset([root], 0.1, seed=0) == (train, val)
    assert split_dataset([root], 0.1, seed=1)[1] != val
    split = tmp_path / "split.txt"
    write_split_file(split, val, images_dirs=[root], val_fraction=0.1, seed=0)
    assert read_split_file(split) == val


def test_training_loop_writes_checkpoint_metrics_and_plot(image_set, tmp_path):
    cfg = _cfg(image_set, tmp_path / "run", val_split_file=str(tmp_path / "split.txt"))
    res = run_training_loop(cfg)
    assert res["step"] == 4
    assert cfg.checkpoint_path.is_file()
    assert (tmp_path / "run" / PLOT_NAME).stat().st_size > 1000
    kinds = [r["kind"] for r in res["history"]]
    assert kinds.count("train") == 4 and kinds.count("val") == 2
    held = read_split_file(tmp_path / "split.txt")
    assert len(held) == 2 and {p.split("/")[1] for p in held} == {"a", "b"}  # one per class of 5
    meta = export_weights(cfg.checkpoint_path, tmp_path / "w.pt", provenance={"note": "x"})
    assert meta["sha256"] == two_stage.sha256_file(tmp_path / "w.pt") and meta["steps"] == 4
    inp = load_two_stage(tmp_path / "w.pt", device="cpu")
    img = smooth_image(24, 40)
    mask = fringe_mask(24, 40, 1.0)
    np.testing.assert_array_equal(inp(img, mask)[mask], img[mask])


class _Kill(Exception):
    pass


def test_resume_after_kill_is_identical_to_uninterrupted_run(image_set, tmp_path):
    full = run_training_loop(_cfg(image_set, tmp_path / "full"))

    def kill_at_3(metrics, ckpt):
        if metrics["step"] == 3:
            raise _Kill

    cfg = _cfg(image_set, tmp_path / "killed")
    with pytest.raises(_Kill):
        run_training_loop(cfg, report=kill_at_3)
    assert torch.load(cfg.checkpoint_path, weights_only=True)["step"] == 2
    resumed = run_training_loop(cfg)
    assert resumed["step"] == 4
    a = torch.load(_cfg(image_set, tmp_path / "full").checkpoint_path, weights_only=True)
    b = torch.load(cfg.checkpoint_path, weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["numpy_rng"] == b["numpy_rng"]
    la = [r["total"] for r in full["history"] if r["kind"] == "train"]
    lb = [r["total"] for r in resumed["history"] if r["kind"] == "train"]
    assert la == lb  # metrics log truncated to the checkpoint, then continued identically


def test_checkpoint_roundtrip_restores_params_optimizer_and_rng(tmp_path, image_set):
    cfg = _cfg(image_set, tmp_path)
    torch.manual_seed(0)
    net = build_two_stage(8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(1, 3, 16, 16)
    m = torch.ones(1, 1, 16, 16)
    net(x, m)[1].mean().backward()
    opt.step()
    rng = np.random.default_rng(5)
    rng.random(3)
    save_checkpoint(tmp_path / "c.pt", model=net, optimizer=opt, step=7, rng=rng, config=cfg)
    cache = [smooth_image(40, 40, s) for s in range(3)]
    expected = sample_batch(cache, rng, 2, 32)
    expected_torch = torch.rand(3)

    net2 = build_two_stage(8)
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-3)
    rng2 = np.random.default_rng(99)
    step = load_checkpoint(tmp_path / "c.pt", model=net2, optimizer=opt2, rng=rng2)
    assert step == 7
    for p, q in zip(net.parameters(), net2.parameters()):
        assert torch.equal(p, q)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    got = sample_batch(cache, rng2, 2, 32)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(torch.rand(3), expected_torch)
    assert not (tmp_path / "c.pt.tmp").exists()


def test_sample_batch_shapes_and_masks(rng):
    cache = [smooth_image(40, 56, s) for s in range(3)]
    images, masks = sample_batch(cache, rng, 6, 32)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (6, 32, 32) and masks.dtype == bool
    frac = 1 - masks.mean(axis=(1, 2))
    assert np.all(frac > 0.01) and np.all(frac < 0.6)


def test_train_config_validated(image_set, tmp_path):
    with pytest.raises(ValueError, match="multiple of 8"):
        _cfg(image_set, tmp_path, crop=30)
    with pytest.raises(ValueError, match="cache_short_side"):
        _cfg(image_set, tmp_path, cache_short_side=16)


def test_job_help():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(repo / "jobs" / "train_inpainter.py"), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--max-minutes" in r.stdout and "--no-ray" in r.stdout


@pytest.mark.slow
def test_train_through_ray_torchtrainer(image_set, tmp_path):
    import ray
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if importlib.util.find_spec("pydantic") is None:  # Ray Train v2 needs it; v1 does not
        os.environ["RAY_TRAIN_V2_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = train_inpainter(image_set, tmp_path / "ray", steps=2, batch_size=2, crop=32, width=8,
                                 cache_short_side=40, checkpoint_every=2, val_every=2, log_every=1,
                                 val_max_images=1, style_weight=0.0, correlation_weight=0.0,
                                 warmup_steps=1, use_ray=True, num_threads=1)
    finally:
        ray.shutdown()
    assert res["step"] == 2
    assert res["provenance"]["trained_with"] == "ray.train.torch.TorchTrainer"
    assert Path(res["weights"]).is_file()


# ------------------------------------------------------------------------------ shipped weights
def _shipped():
    if not two_stage.DEFAULT_WEIGHTS.is_file():
        pytest.skip("cbir_dist/weights/two_stage.pt is not shipped in this checkout")
    return two_stage.DEFAULT_WEIGHTS


def test_shipped_weights_load_and_beat_none():
    _shipped()
    inp = load_two_stage(device="cpu")
    img = smooth_image(64, 80, seed=3)
    mask = fringe_mask(64, 80, 1.0, missing_fraction=0.25)
    out = inp(img, mask)
    np.testing.assert_array_equal(out[mask], img[mask])

    def psnr(a, b):
        return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))

    none = img * mask[..., None]
    assert psnr(out, img) > psnr(none, img) + 10


def test_shipped_weights_sha_checked(tmp_path):
    src = _shipped()
    dst = tmp_path / "two_stage.pt"
    shutil.copyfile(src, dst)
    meta = json.loads(src.with_suffix(".json").read_text())
    meta["sha256"] = "0" * 64
    dst.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="sha256"):
        load_two_stage(dst, device="cpu")


def test_missing_weights_raise(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_two_stage(tmp_path / "nope.pt")
