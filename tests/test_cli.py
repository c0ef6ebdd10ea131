import subprocess
import sys

import pytest

from cbir_dist.cli import build_parser, main


def test_help_imports_nothing_heavy():
    code = ("import sys; from cbir_dist.cli import build_parser; build_parser().format_help(); "
            "print([m for m in ('torch','ray','pymilvus','milvus_lite','cv2','skimage') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("cmd", ["index", "query", "evaluate", "demo", "info"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cbir-dist " + cmd in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "index" in capsys.readouterr().out


def test_an_input_error_exits_2_with_one_line(tmp_path, capsys):
    rc = main(["index", str(tmp_path / "missing"), "--db", str(tmp_path / "x.db"), "--backbone", "none",
               "--descriptors", "glcm"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [f"cbir-dist index: error: {tmp_path / 'missing'}: no such directory"]


def test_a_runtime_failure_exits_1_and_the_traceback_needs_v(tmp_path, capsys, monkeypatch):
    import cbir_dist.index as index
    from cbir_dist.errors import StoreError

    def down(*a, **k):
        raise StoreError("cannot reach Milvus at http://127.0.0.1:1")

    monkeypatch.setattr(index, "run_index", down)
    args = ["index", str(tmp_path), "--backbone", "none", "--descriptors", "glcm"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["cbir-dist index: error: cannot reach Milvus at http://127.0.0.1:1"]
    assert main(["-v", *args]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_an_unexpected_exception_is_one_line_naming_its_type(tmp_path, capsys, monkeypatch):
    import cbir_dist.index as index

    def bug(*a, **k):
        raise KeyError("oops")

    monkeypatch.setattr(index, "run_index", bug)
    assert main(["index", str(tmp_path), "--backbone", "none", "--descriptors", "glcm"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "internal error: KeyError" in err[0] and "-v" in err[0]


def test_query_fringe_and_masks_are_exclusive():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["query", "q", "--fringe", "1", "--masks", "m", "--out", "o.parquet"])


def test_index_with_damage_stores_reconstructed_vectors(tmp_path):
    """`index --fringe HZ --inpainter two-stage` describes the reconstruction, not the intact image."""
    import numpy as np

    from cbir_dist.damage.inpaint import get_inpainter
    from cbir_dist.damage.masks import apply_mask, fringe_mask
    from cbir_dist.demo import make_dataset
    from cbir_dist.features.extract import Extractor
    from cbir_dist.features.spec import FeatureSpec
    from cbir_dist.io.files import content_id
    from cbir_dist.io.images import read_image
    from cbir_dist.store import VectorStore

    data = make_dataset(tmp_path / "d", per_class=1, size=64)
    common = ["--backbone", "none", "--descriptors", "glcm,correlogram"]
    assert main(["index", str(data), "--db", str(tmp_path / "a.db"), "--run-dir", str(tmp_path / "ra"), *common]) == 0
    assert main(["index", str(data), "--db", str(tmp_path / "b.db"), "--run-dir", str(tmp_path / "rb"), *common,
                 "--fringe", "3", "--inpainter", "two-stage"]) == 0
    path = sorted(data.rglob("*.png"))[0]
    cid = content_id(path.read_bytes())
    clean, damaged = (VectorStore(str(tmp_path / f"{x}.db"), "images") for x in "ab")
    spec = FeatureSpec.from_json(damaged.spec_json())
    img = read_image(path)
    known = fringe_mask(64, 64, 3.0)
    expected = Extractor(spec)([get_inpainter("two-stage")(apply_mask(img, known), known)])[0]
    got_damaged, got_clean = damaged.fetch([cid])["vector"][0], clean.fetch([cid])["vector"][0]
    np.testing.assert_allclose(got_damaged, expected, atol=1e-5)
    assert not np.allclose(got_damaged, got_clean, atol=1e-3)
    clean.close()
    damaged.close()


def test_token_comes_from_the_environment_or_a_file_not_the_command_line(tmp_path, monkeypatch):
    from cbir_dist.cli import _token
    from cbir_dist.errors import UsageError

    args = build_parser().parse_args(["classify", "q", "--db", "http://h:19530"])
    monkeypatch.delenv("MILVUS_TOKEN", raising=False)
    assert _token(args) is None
    monkeypatch.setenv("MILVUS_TOKEN", "env-user:env-pass")
    assert _token(args) == "env-user:env-pass"
    f = tmp_path / "token"
    f.write_text("file-user:file-pass\n")
    args = build_parser().parse_args(["classify", "q", "--db", "http://h:19530", "--token-file", str(f)])
    assert _token(args) == "file-user:file-pass"  # the file wins over the environment
    f.write_text("\n")
    with pytest.raises(UsageError, match="empty"):
        _token(args)
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "--token-file" in sub.choices["index"].format_help()
    assert "--token " not in sub.choices["index"].format_help()


def test_index_advises_a_server_once_when_a_lite_collection_passes_the_size(tmp_path, capsys, monkeypatch):
    """The run that takes a lite collection past ADVICE_ROWS prints the advice; the next run does not."""
    from cbir_dist.demo import make_dataset
    from cbir_dist.store import lite

    data = make_dataset(tmp_path / "d", per_class=2, size=48)
    n = len(list(data.rglob("*.png")))
    monkeypatch.setattr(lite, "ADVICE_ROWS", n // 2 + 1)
    common = ["--db", str(tmp_path / "a.db"), "--backbone", "none", "--descriptors", "glcm"]
    first = sorted(p.parent for p in data.rglob("*.png"))[0]  # one class folder: below the size
    assert main(["index", str(first), "--run-dir", str(tmp_path / "r0"), *common]) == 0
    assert "milvus-lite collection" not in capsys.readouterr().out
    assert main(["index", str(data), "--run-dir", str(tmp_path / "r1"), *common]) == 0
    out = capsys.readouterr().out
    assert f"now holds {n:,} rows" in out and "--db http://HOST:19530" in out
    assert main(["index", str(data), "--run-dir", str(tmp_path / "r2"), *common]) == 0
    assert "milvus-lite collection" not in capsys.readouterr().out
