"""Issue 3's integration test: Wang-1000 with MobileNetV2 + correlogram + Gabor, leave-one-out P@10 >= 90 %.

Uses ../shared (skipped with the reason when absent): the Wang images and MobileNetV2's ImageNet file
from TORCH_HOME=../shared/weights/torch (checked against SHA256SUMS; nothing is downloaded).
"""

import hashlib

import numpy as np
import pytest
from conftest import shared_path

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _check_mobilenet_cache(monkeypatch):
    torch_home = shared_path("weights", "torch")
    sums = dict(reversed(line.split()) for line in shared_path("weights", "SHA256SUMS").read_text().splitlines())
    rel = "torch/hub/checkpoints/mobilenet_v2-b0353104.pth"
    f = shared_path("weights", rel)
    assert hashlib.sha256(f.read_bytes()).hexdigest() == sums[rel]
    monkeypatch.setenv("TORCH_HOME", str(torch_home))


def test_wang1000_leave_one_out_p_at_10(tmp_path, monkeypatch):
    from cbir_dist.evaluation.metrics import precision_at_k
    from cbir_dist.features.profiles import build_spec
    from cbir_dist.index import run_index
    from cbir_dist.index.run import IndexConfig
    from cbir_dist.retrieval.search import search_vectors
    from cbir_dist.store import VectorStore

    data = shared_path("data", "wang1000")
    _check_mobilenet_cache(monkeypatch)
    spec = build_spec(backbone="mobilenet_v2", descriptors=("correlogram", "gabor"))
    summary = run_index(spec, IndexConfig(str(data), db=str(tmp_path / "w.db"), collection="wang",
                                          run_dir=str(tmp_path / "run"), progress=False))
    assert (summary.indexed, summary.duplicates, summary.rejected) == (1000, 0, 0)
    store = VectorStore(str(tmp_path / "w.db"), "wang")
    assert store.count() == 1000
    import pyarrow.parquet as pq

    manifest = pq.read_table(tmp_path / "run" / "manifest.parquet").to_pydict()
    ids = np.asarray(manifest["id"], np.int64)
    got = store.fetch(ids)  # in the order asked
    assert np.array_equal(got["id"], ids)
    vectors = got["vector"]
    labels = np.asarray(manifest["label"], dtype=object)
    _ids, _d, _p, nn_labels = search_vectors(store, vectors, ids.tolist(), 10, exclude=True)
    p10 = 100 * precision_at_k(np.asarray(nn_labels, dtype=object), labels, 10).mean()
    p1 = 100 * precision_at_k(np.asarray(nn_labels, dtype=object), labels, 1).mean()
    print(f"wang1000 leave-one-out: P@1 {p1:.1f}  P@10 {p10:.1f}")
    assert p10 >= 90.0
    store.close()
