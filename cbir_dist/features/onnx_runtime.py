"""The backbones on ONNX Runtime: the runtime choice, the export, its cache beside the weights, the session.

On a CPU, ONNX Runtime runs the same networks faster than eager torch (MobileNetV2, one thread,
batch 32 at 224 px: about 26 ms an image in torch, 8 in ONNX Runtime; ResNet-50 about 100 and 78;
``benchmarks/backbone_runtime.py`` measures both). :func:`choose` picks the runtime:

``"auto"``
    ONNX Runtime on the CPU when the ``onnxruntime`` package imports; torch (bfloat16 autocast) on
    CUDA and on other devices.
``"torch"``
    torch everywhere (the behaviour before ONNX Runtime).
``"onnx"``
    ONNX Runtime, on the CPU (an explicit CUDA device is refused: the GPUs keep torch).

The exported graph takes the preprocessed uint8 batch ``(N, H, W, 3)`` (:func:`~.backbones.preprocess`)
and folds in the normalisation torch does on its device (``(x - 255 mean) / (255 std)`` in float32,
the very same constants), so both runtimes start from the same bytes; its output is the ``(N, dim)``
feature. The batch axis is dynamic, and so are H and W except for VGG's ``fc7`` head (its 7x7
adaptive pool needs a known input size: that export is made for one ``image_size``, the pool as two
matrix products).

**Exporter.** The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``, opset 17). Measured
on the development machine (2 shared cores): it exports MobileNetV2 in 0.5 s where the dynamo
exporter (``dynamo=True``; asked for opset 17 it builds 18 and converts down) takes 11-13 s, and
VGG-16 in 0.8 s against 3.8 s, for the same features (both within 5e-6 of torch, relative) and the
same ONNX Runtime speed. Export time counts: it is paid in every process when there is no cache
(random weights, weights in a read-only folder), e.g. in each Ray actor. The dynamo exporter also
needs ``onnxscript``; it does export VGG's fc7 with a dynamic size, which the TorchScript one
refuses ("adaptive_avg_pool2d, input size not accessible"). torch deprecates the TorchScript
exporter; the cache key holds the exporter, the opset and the torch version, so moving to dynamo
later only makes new cache files.

**Cache.** One ``.onnx`` file per (backbone, head, weights, exporter, opset, torch version [, image
size for fc7]), beside the weights file (for ``imagenet`` the torch hub's ``checkpoints/``), written
atomically (a temporary file renamed into place: two processes exporting at once each write their
own and the last rename wins, both whole). The weights' identity is their file's sha256; the file
records the full key in its metadata, and a file that ONNX Runtime cannot load, or whose key is not
the one expected, is exported again. Random weights, and weights in a folder that cannot be written
(or has no write permission bit: root is kept out of read-only shared folders too; said once at
INFO), are exported in memory; the last such export (up to 128 MB) is kept for the
process's next load of the same weights.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

from ..errors import UsageError

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx")
EXPORTER = "torchscript"  # torch.onnx.export(..., dynamo=False)
OPSET = 17
INPUT, OUTPUT = "images", "features"
KEY_PROP = "cbir_dist.export_key"  # metadata entry holding the file's full key
_NOTED: set[str] = set()  # INFO lines already logged once in this process
_MEMO: dict[str, bytes] = {}  # the last in-memory export: key -> model bytes
MEMO_MAX_BYTES = 128 << 20  # larger exports (VGG's fc7: 540 MB) are not kept: that memory outweighs the export


def _note_once(message: str, *args) -> None:
    text = message % args
    if text not in _NOTED:
        _NOTED.add(text)
        log.info(text)


def available() -> bool:
    """True when the ``onnxruntime`` package imports."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def choose(runtime: str, device, requested) -> str:
    """``"onnx"`` or ``"torch"``: what runs a backbone asked for with ``runtime`` on the resolved
    ``device`` (``requested``: the device the caller named, None when it left the choice to us)."""
    check_runtime(runtime)
    if runtime == "torch":
        return "torch"
    if runtime == "onnx":
        if not available():
            raise UsageError("runtime onnx needs the onnxruntime package (pip install onnxruntime); "
                             "or use --runtime torch")
        if requested is not None and device.type != "cpu":
            raise UsageError(f"runtime onnx runs on the CPU, not on {device}; use --runtime torch (or auto) "
                             "on a GPU, or --device cpu")
        return "onnx"
    if device.type != "cpu":
        return "torch"
    if not available():
        _note_once("onnxruntime is not installed: the backbone runs in torch on the CPU (pip install "
                   "onnxruntime for several times the speed)")
        return "torch"
    return "onnx"


def torch_label(device) -> str:
    """The runtime record of a torch backbone: ``torch 2.14.1 cpu fp32``, ``torch 2.14.1 cuda bf16``."""
    import torch

    return f"torch {torch.__version__} {device.type} {'bf16' if device.type == 'cuda' else 'fp32'}"


def onnx_label() -> str:
    """The runtime record of an ONNX Runtime backbone: ``onnxruntime 1.32.0``."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def static_size(name: str, head: str) -> bool:
    """True when the export is for one input size (VGG's fc7: its adaptive pool needs the size)."""
    return head == "fc7"


def export_key(name: str, head: str, identity: str, image_size: int) -> str:
    """Everything an exported file depends on, e.g.
    ``mobilenet_v2-pool.sha256-<64 hex>.torchscript-opset17.torch-2.14.1.anysize``."""
    import torch

    size = str(image_size) if static_size(name, head) else "anysize"
    return f"{name}-{head}.{identity}.{EXPORTER}-opset{OPSET}.torch-{torch.__version__}.{size}"


def cache_file(weights_file: Path, name: str, head: str, sha256: str, image_size: int) -> Path:
    """The cache file beside ``weights_file``: ``<weights name>.<backbone>-<head>.<16 hex>.<exporter,
    opset, torch, size>.onnx``; its metadata holds the whole key (:func:`export_key`)."""
    import torch

    size = f"{image_size}px" if static_size(name, head) else "anysize"
    return weights_file.with_name(f"{weights_file.name}.{name}-{head}.{sha256[:16]}.{EXPORTER}{OPSET}."
                                  f"torch{torch.__version__}.{size}.onnx")


def _pool_matrix(size: int, out: int):
    """``P`` (out, size) with ``P @ x @ P.T`` = ``adaptive_avg_pool2d(x, out)`` on a ``size x size`` map:
    row ``i`` averages ``[floor(i size / out), ceil((i + 1) size / out))``, torch's windows."""
    import torch

    p = torch.zeros(out, size)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        p[i, lo:hi] = 1.0 / (hi - lo)
    return p


def export(model, *, name: str, head: str, image_size: int, mean, inv_std, key: str) -> bytes:
    """The ONNX bytes of ``model`` (a cut backbone in eval mode on the CPU) with the normalisation in
    front: input ``images`` uint8 ``(N, H, W, 3)``, output ``features`` float32 ``(N, dim)``; the key
    goes into the model's metadata (:data:`KEY_PROP`).

    VGG's fc7 head pools its conv5 map (``image_size // 32`` a side) to 7x7, which the TorchScript
    exporter refuses unless 7 divides that side: the pool is exported as the equivalent two matrix
    products (:func:`_pool_matrix`) for the one size the export is made for.
    """
    import onnx
    import torch
    from torch import nn

    class FixedPool(nn.Module):
        def __init__(self, side: int, out: int):
            super().__init__()
            self.register_buffer("p", _pool_matrix(side, out))

        def forward(self, x):
            return torch.matmul(torch.matmul(self.p, x), self.p.t())

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean.detach().to("cpu", torch.float32).clone())
            self.register_buffer("inv_std", inv_std.detach().to("cpu", torch.float32).clone())

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).float()
            return self.model((x - self.mean) * self.inv_std)

    if static_size(name, head):
        out = model.avgpool.output_size
        model.avgpool = FixedPool(image_size // 32, out if isinstance(out, int) else out[0])
    axes = {0: "batch"} if static_size(name, head) else {0: "batch", 1: "height", 2: "width"}
    dummy = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(Normalised().eval(), (dummy,), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: axes, OUTPUT: {0: "batch"}})
    # protobuf merges concatenated messages: appending a model that holds only the metadata entry
    # adds it without parsing (and copying) hundreds of MB of weights
    meta = onnx.ModelProto()
    meta.metadata_props.add(key=KEY_PROP, value=key)
    return buf.getvalue() + meta.SerializeToString()


def session_options(num_threads: int):
    """ONNX Runtime's options: ``num_threads`` intra-op threads, one inter-op (sequential graph)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(num_threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only
    return so


def _session(source, num_threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(source, session_options(num_threads), providers=["CPUExecutionProvider"])


def _cached_session(path: Path, key: str, num_threads: int):
    """The session of a cache file holding ``key``; None (with a warning) when it is absent, cannot
    be loaded (truncated, corrupt) or was made for another key."""
    if not path.is_file():
        return None
    try:
        sess = _session(str(path), num_threads)
    except Exception as exc:  # onnxruntime raises its own InvalidProtobuf, Fail, ... for a bad file
        log.warning("%s: the cached ONNX export cannot be loaded (%s: %s); exporting it again",
                    path, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return None
    found = sess.get_modelmeta().custom_metadata_map.get(KEY_PROP)
    if found != key:
        log.warning("%s: the cached ONNX export was made for %s, not %s; exporting it again", path, found, key)
        return None
    return sess


def _write(path: Path, data: bytes) -> str | None:
    """Write ``data`` to ``path`` atomically; the reason when it cannot be written.

    A folder without any write permission bit is read-only by intent and is not written, even by
    root (whom the bits do not stop): shared weights folders are kept that way.
    """
    import os

    from ..io.tables import atomic_path

    try:
        st = path.parent.stat()
    except OSError as exc:
        return f"{path.parent} cannot be read ({exc.strerror or exc})"
    if not (st.st_mode & 0o222) or not os.access(path.parent, os.W_OK):
        return f"{path.parent} is read-only"
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        return f"{path.parent} cannot be written ({exc.strerror or exc})"
    return None


def open_session(build, *, name: str, head: str, image_size: int, identity: str, num_threads: int,
                 weights_file: Path | None = None, sha256: str | None = None):
    """An ONNX Runtime session of the backbone, from the cache when it holds it.

    ``build()`` returns ``(model, mean, inv_std)`` (the cut torch model with its weights, and the
    normalisation tensors); it is called only when the export must be made. ``identity`` names the
    weights in the key (``sha256-<hex>`` for files, ``random-seed0``); ``weights_file`` and
    ``sha256``: the file beside which the cache lives (None: in memory). Returns the session and
    where it came from (``"cache"``, ``"exported"``, ``"memory"``).
    """
    key = export_key(name, head, identity, image_size)
    path = cache_file(weights_file, name, head, sha256, image_size) if weights_file is not None else None
    if path is not None:
        sess = _cached_session(path, key, num_threads)
        if sess is not None:
            log.info("%s %s: ONNX export from the cache %s", name, head, path)
            return sess, "cache"
    data = _MEMO.get(key)
    if data is None:
        model, mean, inv_std = build()
        data = export(model, name=name, head=head, image_size=image_size, mean=mean, inv_std=inv_std, key=key)
        del model
        if path is not None:
            why = _write(path, data)
            if why is None:
                log.info("%s %s: exported to ONNX, cached in %s", name, head, path)
                return _session(str(path), num_threads), "exported"
        else:
            why = "random weights have no file to keep it beside"
        _note_once("%s %s: the ONNX export is kept in memory, not cached: %s", name, head, why)
        _MEMO.clear()
        if len(data) <= MEMO_MAX_BYTES:
            _MEMO[key] = data
    return _session(data, num_threads), "memory"


__all__ = ["RUNTIMES", "available", "cache_file", "check_runtime", "choose", "export", "export_key",
           "onnx_label", "open_session", "torch_label"]
