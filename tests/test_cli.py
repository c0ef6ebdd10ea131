import subprocess
import sys

import pytest

from cbir_dist.cli import build_parser, main


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t=time.time(); from cbir_dist.cli import build_parser; build_parser().format_help(); "
            "heavy=[m for m in ('torch','ray','pymilvus','cv2','skimage') if m in sys.modules]; "
            "print(heavy, time.time()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[]"), out


@pytest.mark.parametrize("cmd", ["index", "query", "evaluate", "demo"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: cbir-dist " + cmd in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "index" in capsys.readouterr().out


def test_library_errors_become_exit_1_with_message(tmp_path, capsys):
    rc = main(["index", str(tmp_path / "missing"), "--db", str(tmp_path / "x.db"), "--backbone", "none",
               "--descriptors", "glcm"])
    assert rc == 1
    assert "no such directory" in capsys.readouterr().err


def test_query_fringe_and_masks_are_exclusive():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["query", "q", "--fringe", "1", "--masks", "m", "--out", "o.parquet"])


def test_index_with_damage_stores_reconstructed_vectors(tmp_path):
    """`index --fringe HZ --inpainter two-stage` describes the reconstruction, not the intact image."""
    import numpy as np

    from cbir_dist.demo import make_dataset
    from cbir_dist.extract import Extractor
    from cbir_dist.fuse import FeatureSpec
    from cbir_dist.imageio import content_id, read_image
    from cbir_dist.inpaint import get_inpainter
    from cbir_dist.masks import apply_mask, fringe_mask
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
