"""The two-stage inpainter: network contract, loader, the training loop (a faithful port), checkpoints, export."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cbir_dist.damage.inpaint import get_inpainter, is_network
from cbir_dist.damage.inpaint import two_stage
from cbir_dist.damage.inpaint.two_stage import TwoStageInpainter, load_two_stage, prefill
from cbir_dist.damage.inpaint.two_stage_net import FFCBlock, RegionConv2d, build_model, count_parameters
from cbir_dist.damage.masks import fringe_mask
from cbir_dist.errors import UsageError, WeightsError
from cbir_dist.training.checkpoints import export_weights, load_checkpoint, save_checkpoint
from cbir_dist.training.config import TrainConfig
from cbir_dist.training.data import read_split_file, sample_batch, split_dataset, stratified_subset, write_split_file
from cbir_dist.training.history import PLOT_NAME
from cbir_dist.training.job import train_inpainter
from cbir_dist.training.loop import run_training_loop
from cbir_dist.training.losses import loss_fn, ssim_holes

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = {"coarse_channels": 16, "coarse_blocks": 2, "refine_channels": 16, "refine_skip_channels": 8,
        "refine_blocks": 1, "half_channels": 8}


def smooth_image(h, w, seed=0):
    """Smooth colour waves plus noise: something an inpainter can predict and a crop can tell apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ph = rng.uniform(0, 2 * np.pi, 3)
    ch = [128 + 90 * np.sin(xx / w * 2 * np.pi * 3 + ph[0]), 128 + 90 * np.cos(yy / h * 2 * np.pi * 2 + ph[1]),
          128 + 60 * np.sin((xx + yy) / (h + w) * 2 * np.pi * 5 + ph[2])]
    return np.clip(np.stack(ch, 2) + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def trained_like(seed=0, config=TINY):
    """A network with random (non-zero) heads, so that its output differs from the pre-fill."""
    torch.manual_seed(seed)
    net = build_model(config).eval()
    with torch.no_grad():
        for head in (net.c_head, net.r_head[0]):
            torch.nn.init.normal_(head.weight, std=0.05)
    return net


@pytest.fixture(scope="module")
def net():
    return TwoStageInpainter(trained_like(), "cpu")


# --------------------------------------------------------------------------------------- model
def test_importing_the_registry_does_not_import_torch():
    code = "import sys, cbir_dist.damage.inpaint, cbir_dist.damage.hook; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.stdout.strip() == "False", r.stderr
    assert is_network("two-stage") and not is_network("telea")


@pytest.mark.parametrize("shape", [(16, 16), (32, 48), (37, 53), (17, 70)])
def test_any_size_from_16_known_pixels_exact(net, rng, shape):
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    known = rng.random(shape) > 0.3
    out = net(img, known)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], img[known])
    assert not np.array_equal(out[~known], prefill(img, known)[~known])  # the network corrected the pre-fill


@pytest.mark.parametrize("shape", [(24, 40), (24, 40, 1)])
def test_grey_images(net, rng, shape):
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    known = rng.random((24, 40)) > 0.4
    out = net(img, known)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[known], img[known])


def test_untrained_network_returns_the_telea_prefill_exactly(rng):
    img = smooth_image(40, 56)
    known = fringe_mask(40, 56, 2.0)
    untrained = TwoStageInpainter(build_model(TINY).eval(), "cpu")
    np.testing.assert_array_equal(untrained(img, known), get_inpainter("telea")(img, known))


def test_all_known_and_nothing_known(net, rgb_image):
    h, w = rgb_image.shape[:2]
    out = net(rgb_image, np.ones((h, w), bool))
    np.testing.assert_array_equal(out, rgb_image)
    assert out is not rgb_image
    assert not net(rgb_image, np.zeros((h, w), bool)).any()


def test_batch_equals_one_at_a_time_and_keeps_order(net):
    imgs = [smooth_image(32, 40, 1), smooth_image(24, 24, 2), smooth_image(32, 40, 3)]
    masks = [fringe_mask(32, 40, 1.0), fringe_mask(24, 24, 3.0), fringe_mask(32, 40, 6.0)]
    batch = net.inpaint_batch(imgs, masks)
    for b, i, k in zip(batch, imgs, masks):
        np.testing.assert_array_equal(b, net(i, k))
    pre = [net.prefill(i, k) for i, k in zip(imgs, masks)]
    np.testing.assert_array_equal(net.refine_batch(pre, masks)[1], batch[1])  # the two halves = the whole


def test_large_image_runs_the_network_downscaled(rng):
    inp = TwoStageInpainter(trained_like(), "cpu", max_side=32)
    img = smooth_image(50, 90)
    known = fringe_mask(50, 90, 2.0)
    out = inp(img, known)
    np.testing.assert_array_equal(out[known], img[known])
    assert not np.array_equal(out, prefill(img, known))
    with pytest.raises(ValueError, match="max_side"):
        TwoStageInpainter(inp.model, "cpu", max_side=4)


@pytest.mark.parametrize(
    "image, mask, err",
    [
        (np.zeros((16, 16, 3), np.float32), np.ones((16, 16), bool), TypeError),
        (np.zeros((16, 16, 2), np.uint8), np.ones((16, 16), bool), ValueError),
        (np.zeros((16, 16, 3), np.uint8), np.ones((16, 16), np.uint8), TypeError),
        (np.zeros((16, 16, 3), np.uint8), np.ones((16, 17), bool), ValueError),
    ],
)
def test_call_validates_inputs(net, image, mask, err):
    with pytest.raises(err):
        net(image, mask)


def test_forward_rejects_unpadded_size_and_config_is_validated():
    m = build_model(TINY)
    with pytest.raises(ValueError, match="multiples of 8"):
        m(torch.zeros(1, 3, 30, 32), torch.ones(1, 1, 30, 32))
    with pytest.raises(ValueError, match="unknown"):
        build_model({"width": 32})
    with pytest.raises(ValueError, match="prefill"):
        build_model({"prefill": "biharmonic"})


def test_region_conv_uses_separate_filters_per_region():
    conv = RegionConv2d(1, 1, kernel_size=1)
    with torch.no_grad():
        conv.conv.weight[:] = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1)  # known bank, missing bank
        conv.conv.bias[:] = torch.tensor([0.0, 10.0])
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:5, 3:7] = 0
    y = conv(torch.full((1, 1, 8, 8), 3.0), mask)
    assert torch.all(y[mask.bool()] == 6.0) and torch.all(y[~mask.bool()] == 7.0)
    strided = RegionConv2d(1, 1, kernel_size=1, stride=2)
    with torch.no_grad():
        strided.conv.weight.zero_()
        strided.conv.bias[:] = torch.tensor([1.0, -1.0])
    m = torch.ones(1, 1, 8, 8)
    m[..., 0, 0] = 0  # one missing pixel: its whole 2x2 window counts as missing
    y = strided(torch.zeros(1, 1, 8, 8), m)
    assert y[0, 0, 0, 0] == -1.0 and torch.all(y[0, 0].flatten()[1:] == 1.0)


def test_fourier_block_sees_the_whole_image():
    torch.manual_seed(0)
    block = FFCBlock(8).eval()
    x = torch.zeros(1, 8, 16, 16)
    x2 = x.clone()
    x2[..., 15, 15] = 5.0  # the far corner
    with torch.no_grad():
        d = (block(x2) - block(x))[..., 0, 0]
    assert d.abs().sum() > 0  # two 3x3 convolutions alone could not reach (0, 0) from (15, 15)


def test_parameter_count_of_the_shipped_architecture():
    assert 700_000 < count_parameters(build_model()) < 850_000


# ------------------------------------------------------------------------------ shipped weights
def _shipped():
    if not two_stage.DEFAULT_WEIGHTS.is_file():
        pytest.skip("cbir_dist/weights/two_stage.pt is not shipped in this checkout")
    return two_stage.DEFAULT_WEIGHTS


def test_shipped_weights_load_from_the_registry_and_fill_holes():
    _shipped()
    meta = json.loads(two_stage.DEFAULT_PROVENANCE.read_text())
    for key in ("command", "equivalent_command", "step", "sha256", "split_file", "data", "model"):
        assert meta.get(key), key
    assert meta["split_file"] == "two_stage_split.txt" and "train-inpainter" in meta["equivalent_command"]
    inp = get_inpainter("two-stage", device="cpu")
    img = smooth_image(96, 128, seed=3)
    known = fringe_mask(96, 128, 1.0)
    out = inp(img, known)
    np.testing.assert_array_equal(out[known], img[known])

    def psnr(a):
        return 10 * np.log10(255.0**2 / np.mean((a.astype(float) - img.astype(float)) ** 2))

    assert psnr(out) > psnr(img * known[..., None]) + 10


@pytest.mark.integration
def test_shipped_weights_beat_telea_on_held_out_images():
    """Mean PSNR over 6 held-out photos x 3 frequencies (the full comparison: benchmarks/inpainting.py)."""
    from conftest import shared_path

    from cbir_dist.io.images import read_image

    _shipped()
    root = shared_path("data")
    rel = stratified_subset(read_split_file(two_stage.WEIGHTS_DIR / "two_stage_split.txt"), 6)
    inp, telea = get_inpainter("two-stage", device="cpu"), get_inpainter("telea")
    gains = []
    for r in rel:
        img = read_image(root / r)
        for f in (0.5, 2.0, 6.0):
            known = fringe_mask(*img.shape[:2], f)
            mse = [np.mean((x(img, known).astype(float) - img) ** 2) for x in (inp, telea)]
            gains.append(10 * np.log10(mse[1] / mse[0]))
    assert np.mean(gains) > 0.1, gains


def test_shipped_weights_sha_and_architecture_checked(tmp_path):
    src = _shipped()
    dst = tmp_path / "two_stage.pt"
    shutil.copyfile(src, dst)
    meta = json.loads(src.with_suffix(".json").read_text())
    dst.with_suffix(".json").write_text(json.dumps({**meta, "sha256": "0" * 64}))
    with pytest.raises(WeightsError, match="sha256"):
        load_two_stage(dst, device="cpu")
    dst.with_suffix(".json").write_text(json.dumps({**meta, "model": {"architecture": "TwoStageNet", "width": 32}}))
    with pytest.raises(WeightsError, match="TwoStageNet"):
        load_two_stage(dst, device="cpu")
    dst.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="provenance"):
        load_two_stage(dst, device="cpu")


def test_missing_weights_raise(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_two_stage(tmp_path / "nope.pt")


# -------------------------------------------------------------------------------------- losses
def test_ssim_holes_is_one_for_identical_images_and_lower_otherwise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    hole = torch.zeros(2, 1, 24, 24)
    hole[..., 8:16, :] = 1
    assert ssim_holes(a, a, hole).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim_holes((a + 0.5 * torch.randn(a.shape, generator=g)).clamp(-1, 1), a, hole) < 0.9


def test_db_loss_is_zero_gain_for_the_prefill_and_rewards_a_better_fill():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = torch.ones(2, 1, 16, 16)
    mask[..., 4:12] = 0
    pre = target + (1 - mask) * 0.4
    _, terms = loss_fn(target, mask, pre, pre, pre)
    assert terms["db_gain"] == pytest.approx(0.0, abs=1e-4) and terms["rel_l1"] == pytest.approx(1.0, abs=1e-2)
    better = target + (1 - mask) * 0.1
    lb, tb = loss_fn(target, mask, better, better, pre)
    lp, _ = loss_fn(target, mask, pre, pre, pre)
    assert tb["db_gain"] == pytest.approx(20 * np.log10(4), abs=0.05)  # error / 4 = +12 dB
    assert lb < lp
    with pytest.raises(ValueError, match="loss"):
        loss_fn(target, mask, pre, pre, pre, loss="vgg")


# ------------------------------------------------------------------------------------ training
def _write_images(root: Path, classes=("a", "b"), per_class=4, size=(56, 64)):
    from PIL import Image

    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(smooth_image(*size, seed=10 * ci + i)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def image_set(tmp_path):
    """setA/{a,b}/{0..3}.png under tmp/data, and a split file holding out a/0 and b/3."""
    root = _write_images(tmp_path / "data" / "setA")
    (tmp_path / "data" / "split.txt").write_text("setA/a/0.png\nsetA/b/3.png\n")
    return root


def _cfg(image_set, out, **kw):
    base = dict(images_dirs=(str(image_set),), out=str(out), model_config=TINY, steps=6, batch_size=2,
                crop_min=32, crop_max=48, warmup=2, ssim_batch=1, log_every=1, val_every=0, snapshot_every=0,
                data_root=str(image_set.parent), val_split_file=str(image_set.parent / "split.txt"))
    base.update(kw)
    return TrainConfig(**base)


#: Per-step losses of the prototype's train.py (/work/proto_inpaint, PYTHONPATH=/work/wt-proto) on
#: ``image_set`` with the settings of ``_cfg``, one thread: the command in
#: test_training_reproduces_the_prototype_per_step. The package's loop gave the same floats bit for
#: bit, and the same weights after the 6 steps (checked by hand on 2026-12-01, and on the real data
#: with the shipped settings for 3 steps: 2.0453596115112305, 2.035207509994507, 2.2015812397003174).
PROTOTYPE_LOSSES = [2.0451107025146484, 2.1501998901367188, 2.1292552947998047, 1.505455493927002,
                    1.6177740097045898, 1.9347044229507446]
#: How close another CPU comes to the pinned losses. The losses are float32 means of float32
#: convolutions whose reductions each CPU orders by its own SIMD width (AVX2, AVX-512) and thread
#: split, so one step differs in the last bits (1 ulp = 1.2e-7 relative); six steps of Adam carry
#: that forward (an AMD EPYC with AVX-512 gave 1.9347045421600342 at step 6, 6e-8 off). 1e-5 leaves
#: two orders of magnitude for that, and is still far below what a changed loss or schedule moves
#: (the first step's loss changes by >1e-3 with any other setting). Equality holds only on one machine.
PINNED_RTOL = 1e-5


def assert_pinned_losses(losses):
    np.testing.assert_allclose(losses, PROTOTYPE_LOSSES, rtol=PINNED_RTOL, atol=0)


def test_training_loop_reproduces_the_pinned_prototype_losses(image_set, tmp_path):
    res = run_training_loop(_cfg(image_set, tmp_path / "run"))
    losses = [r["loss"] for r in res["history"] if r["kind"] == "train"]
    assert_pinned_losses(losses)


def test_training_reproduces_the_prototype_per_step(image_set, tmp_path):
    """Run the prototype itself (when this machine has it) and compare every step and the final weights."""
    proto, snapshot = Path("/work/proto_inpaint/train.py"), Path("/work/wt-proto/cbir_dist/masks.py")
    if not (proto.is_file() and snapshot.is_file()):
        pytest.skip("the prototype (/work/proto_inpaint, /work/wt-proto) is not on this machine")
    out = tmp_path / "proto"
    cmd = [sys.executable, str(proto), "--out", str(out), "--config", json.dumps(TINY), "--steps", "6",
           "--batch-size", "2", "--crop-min", "32", "--crop-max", "48", "--lr", "1e-3", "--lr-final", "0.02",
           "--warmup", "2", "--seed", "0", "--loss", "db", "--coarse-weight", "0.5", "--db-weight", "0.25",
           "--ssim-weight", "1.0", "--ssim-batch", "1", "--fringe-prob", "0.75", "--log-every", "1",
           "--val-every", "0", "--data-dirs", str(image_set), "--data-root", str(image_set.parent),
           "--split-file", str(image_set.parent / "split.txt")]
    env = {**os.environ, "PYTHONPATH": str(snapshot.parents[1]), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=proto.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    res = run_training_loop(_cfg(image_set, tmp_path / "pkg"))
    ours = [x for x in res["history"] if x["kind"] == "train"]
    assert [x["loss"] for x in ours] == [x["loss"] for x in theirs]  # one machine, one thread: bit for bit
    assert_pinned_losses([x["loss"] for x in ours])
    assert [x["grad_norm"] for x in ours] == [x["grad_norm"] for x in theirs]
    a = torch.load(out / "checkpoint.pt", weights_only=True)
    b = torch.load(res["checkpoint"], weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["numpy_rng"] == b["numpy_rng"]


def test_training_writes_checkpoint_metrics_snapshots_plot_and_exports(image_set, tmp_path):
    cfg = _cfg(image_set, tmp_path / "run", steps=4, val_every=2, val_images=2, snapshot_every=2)
    res = run_training_loop(cfg)
    assert res["step"] == 4 and cfg.checkpoint_path.is_file()
    assert (tmp_path / "run" / PLOT_NAME).stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == ["step_000002.pt", "step_000004.pt"]
    vals = [r for r in res["history"] if r["kind"] == "val"]
    assert len(vals) == 2 and {"dpsnr@0.5", "dpsnr@6", "dpsnr_mean", "dpsnr_min"} <= set(vals[0])
    meta = export_weights(tmp_path / "run" / "snapshots" / "step_000004.pt", tmp_path / "w.pt",
                          provenance={"command": "x"})
    assert meta["sha256"] == two_stage.sha256_file(tmp_path / "w.pt") and meta["step"] == 4
    assert meta["model"]["config"]["coarse_channels"] == 16
    inp = load_two_stage(tmp_path / "w.pt", device="cpu")
    img, known = smooth_image(24, 40), fringe_mask(24, 40, 1.0)
    np.testing.assert_array_equal(inp(img, known)[known], img[known])
    w = torch.load(tmp_path / "w.pt", weights_only=True)
    b = torch.load(cfg.checkpoint_path, weights_only=True)["model"]
    assert all(torch.equal(w[k], b[k]) for k in b)  # the snapshot at the last step is the final model


class _Kill(Exception):
    pass


def test_resume_after_kill_is_identical_to_uninterrupted_run(image_set, tmp_path):
    full = run_training_loop(_cfg(image_set, tmp_path / "full", checkpoint_every=2))

    def kill_at_3(metrics, ckpt):
        if metrics["step"] == 3:
            raise _Kill

    cfg = _cfg(image_set, tmp_path / "killed", checkpoint_every=2)
    with pytest.raises(_Kill):
        run_training_loop(cfg, report=kill_at_3)
    assert torch.load(cfg.checkpoint_path, weights_only=True)["step"] == 2
    resumed = run_training_loop(cfg)
    assert resumed["step"] == 6
    a = torch.load(full["checkpoint"], weights_only=True)
    b = torch.load(cfg.checkpoint_path, weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert a["numpy_rng"] == b["numpy_rng"]
    la = [r["loss"] for r in full["history"] if r["kind"] == "train"]
    lb = [r["loss"] for r in resumed["history"] if r["kind"] == "train"]
    # the log was truncated to the checkpoint, then continued identically: bit for bit on this machine
    assert la == lb
    assert_pinned_losses(la)


def test_resume_refuses_other_training_settings_but_not_other_run_settings(image_set, tmp_path):
    run_training_loop(_cfg(image_set, tmp_path / "r", steps=2))
    with pytest.raises(UsageError, match="lr"):
        run_training_loop(_cfg(image_set, tmp_path / "r", steps=2, lr=5e-4))
    again = run_training_loop(_cfg(image_set, tmp_path / "r", steps=2, log_every=2, checkpoint_minutes=1.0))
    assert again["step"] == 2


def test_steps_this_session_stops_and_the_same_command_continues(image_set, tmp_path):
    first = run_training_loop(_cfg(image_set, tmp_path / "s", steps_this_session=4))
    assert first["step"] == 4 and first["stopped"] == "steps_this_session"
    again = run_training_loop(_cfg(image_set, tmp_path / "s"))
    assert again["step"] == 6
    assert_pinned_losses([r["loss"] for r in again["history"] if r["kind"] == "train"])
    full = run_training_loop(_cfg(image_set, tmp_path / "full"))  # the same six steps in one session
    assert [r["loss"] for r in again["history"] if r["kind"] == "train"] == \
        [r["loss"] for r in full["history"] if r["kind"] == "train"]


def test_checkpoint_roundtrip_restores_params_optimizer_and_rng(image_set, tmp_path):
    cfg = _cfg(image_set, tmp_path)
    torch.manual_seed(0)
    model = trained_like()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16))[1].mean().backward()
    opt.step()
    rng = np.random.default_rng(5)
    rng.random(3)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, step=7, rng=rng, config=cfg)
    cache = [smooth_image(48, 48, s) for s in range(3)]
    expected = sample_batch(cache, rng, 2, 32, 48, 0.75)
    model2 = build_model(TINY)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    rng2 = np.random.default_rng(99)
    assert load_checkpoint(tmp_path / "c.pt", model=model2, optimizer=opt2, rng=rng2, config=cfg)["step"] == 7
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    for got, want in zip(sample_batch(cache, rng2, 2, 32, 48, 0.75), expected):
        np.testing.assert_array_equal(got, want)
    assert not list(tmp_path.glob("*.tmp"))


def test_sample_batch_crops_masks_and_prefills(rng):
    cache = [smooth_image(56, 64, s) for s in range(3)]
    tgt, pre, known = sample_batch(cache, rng, 6, 32, 48, 0.75)
    c = tgt.shape[1]
    assert tgt.shape == pre.shape == (6, c, c, 3) and c % 8 == 0 and 32 <= c <= 48 and known.shape == (6, c, c)
    frac = 1 - known.mean(axis=(1, 2))
    assert np.all(frac > 0.01) and np.all(frac < 0.7)
    np.testing.assert_array_equal(pre[known], tgt[known])
    np.testing.assert_array_equal(pre[0], get_inpainter("telea")(tgt[0], known[0]))


def test_split_is_deterministic_disjoint_and_per_class(tmp_path):
    root = _write_images(tmp_path / "d" / "s1", classes=("x", "y"), per_class=20, size=(16, 16))
    train, val = split_dataset([root], 0.1, seed=0)
    assert len(val) == 4 and len(train) == 36 and not set(train) & set(val)
    assert sum(p.startswith("s1/x/") for p in val) == 2
    assert split_dataset([root], 0.1, seed=0) == (train, val) and split_dataset([root], 0.1, seed=1)[1] != val
    write_split_file(tmp_path / "split.txt", val, images_dirs=[root], val_fraction=0.1, seed=0)
    assert read_split_file(tmp_path / "split.txt") == val
    sub = stratified_subset(val, 2)
    assert len(sub) == 2 and {p.split("/")[1] for p in sub} == {"x", "y"}


def test_held_out_files_are_never_trained_on(image_set, tmp_path):
    from cbir_dist.training.data import resolve_split

    train, val = resolve_split(_cfg(image_set, tmp_path))
    assert [p.name for p in val] == ["0.png", "3.png"] and len(train) == 6
    assert not {str(p) for p in train} & {str(p) for p in val}
    (image_set.parent / "split.txt").write_text("setA/a/9.png\n")
    with pytest.raises(ValueError, match="not under"):
        resolve_split(_cfg(image_set, tmp_path))


def test_train_config_validated(image_set, tmp_path):
    with pytest.raises(ValueError, match="multiples of 8"):
        _cfg(image_set, tmp_path, crop_min=30)
    with pytest.raises(ValueError, match="loss"):
        _cfg(image_set, tmp_path, loss="vgg")
    with pytest.raises(ValueError, match="unknown model config"):
        _cfg(image_set, tmp_path, model_config={"width": 32})


def test_defaults_are_the_long_runs_arguments():
    """``cbir-dist train-inpainter`` with no options trains what run_long.sh trains."""
    from cbir_dist.training.job import PROTOTYPE_COMMAND

    d = TrainConfig(images_dirs=("x",), out="x")
    for flag, value in (("--steps", d.steps), ("--batch-size", d.batch_size), ("--crop-min", d.crop_min),
                        ("--crop-max", d.crop_max), ("--lr", d.lr), ("--lr-final", d.lr_final),
                        ("--warmup", d.warmup), ("--seed", d.seed), ("--loss", d.loss),
                        ("--coarse-weight", d.coarse_weight), ("--db-weight", d.db_weight),
                        ("--ssim-weight", d.ssim_weight), ("--ssim-batch", d.ssim_batch),
                        ("--fringe-prob", d.fringe_prob)):
        given = PROTOTYPE_COMMAND.split(flag + " ")[1].split()[0]
        assert (float(given) == float(value)) if not isinstance(value, str) else given == value, flag
    assert json.loads(PROTOTYPE_COMMAND.split("--config '")[1].split("'")[0]) == d.full_model_config


def test_job_help():
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "train_inpainter.py"), "--help"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "--max-minutes" in r.stdout and "--no-ray" in r.stdout and "--crop-min" in r.stdout


def test_train_inpainter_in_process_exports_weights_with_provenance(image_set, tmp_path):
    res = train_inpainter(image_set, tmp_path / "job", use_ray=False, model_config=TINY, steps=2, batch_size=2,
                          crop_min=32, crop_max=32, warmup=1, ssim_batch=1, log_every=1, val_every=2, val_images=1,
                          snapshot_every=0, data_root=str(image_set.parent),
                          val_split_file=str(image_set.parent / "split.txt"), command="cbir-dist train-inpainter x")
    meta = json.loads((tmp_path / "job" / "two_stage.json").read_text())
    assert res["step"] == meta["step"] == 2 and meta["command"] == "cbir-dist train-inpainter x"
    assert meta["trained_with"] == "in-process loop" and meta["split_file"] == "split.txt"
    assert meta["final_validation"]["step"] == 2 and meta["sha256"] == two_stage.sha256_file(tmp_path / "job" / "two_stage.pt")


@pytest.mark.slow
def test_train_through_ray_torchtrainer(image_set, tmp_path):
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if importlib.util.find_spec("pydantic") is None:  # Ray Train v2 needs it; v1 does not
        os.environ["RAY_TRAIN_V2_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = train_inpainter(image_set, tmp_path / "ray", use_ray=True, model_config=TINY, steps=2, batch_size=2,
                              crop_min=32, crop_max=32, warmup=1, ssim_batch=1, log_every=1, val_every=0,
                              snapshot_every=0, data_root=str(image_set.parent),
                              val_split_file=str(image_set.parent / "split.txt"))
    finally:
        ray.shutdown()
    assert res["step"] == 2
    assert res["provenance"]["trained_with"] == "ray.train.torch.TorchTrainer"
    assert Path(res["weights"]).is_file()


def test_ship_script_writes_weights_and_provenance_naming_both_commands(image_set, tmp_path):
    """scripts/ship_two_stage.py on a snapshot: the loader accepts the result; the JSON names the commands."""
    run_training_loop(_cfg(image_set, tmp_path / "run", steps=2, snapshot_every=2))
    out = tmp_path / "ship" / "two_stage.pt"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_two_stage.py"),
                        str(tmp_path / "run" / "snapshots" / "step_000002.pt"), "--out", str(out),
                        "--metrics", str(tmp_path / "run" / "metrics.jsonl"), "--note", "test"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["step"] == meta["steps"] == 2 and meta["note"] == "test"
    assert "--steps 50000" in meta["command"] and meta["equivalent_command"].startswith("OMP_NUM_THREADS=1 cbir-dist train-inpainter")
    assert meta["split_file"] == "two_stage_split.txt" and len(meta["split_sha256"]) == 64
    assert meta["sha256"] == two_stage.sha256_file(out)
    load_two_stage(out, device="cpu")


def test_ship_script_on_a_checkpoint_of_this_package_names_its_own_command(image_set, tmp_path):
    """A checkpoint of train-inpainter: the JSON's command is this package's, with its settings and threads."""
    cfg = _cfg(image_set, tmp_path / "run", steps=2, checkpoint_every=2)
    run_training_loop(cfg)
    out = tmp_path / "ship" / "two_stage.pt"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "ship_two_stage.py"), str(cfg.checkpoint_path),
                        "--out", str(out), "--metrics", str(tmp_path / "run" / "metrics.jsonl")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["step"] == meta["steps"] == meta["schedule_steps"] == 2
    assert meta["command"].startswith("OMP_NUM_THREADS=1 cbir-dist train-inpainter")
    assert "--steps 2 " in meta["command"] and meta["command"].endswith("--no-ray")
    assert str(image_set) in meta["command"] and "train.py" not in meta["command"]
    assert meta["trained_with"].startswith("cbir-dist train-inpainter")
    assert meta["training_settings"]["steps"] == 2 and meta["sha256"] == two_stage.sha256_file(out)
    load_two_stage(out, device="cpu")
