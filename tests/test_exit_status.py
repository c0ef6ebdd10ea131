"""Exit statuses that tell the truth, and a failed first run that leaves no collection behind.

``query`` and ``classify`` exit 1 when any input could not be answered (the count on stderr);
``index`` exits 1 when every file was rejected and nothing was written. A run that fails before it
writes a row drops the collection it created; an empty collection built with another spec is
rebuilt silently; a spec mismatch found by ``index`` names the difference and ``--overwrite``.
"""

from __future__ import annotations

import pytest

from cbir_dist.cli import main
from cbir_dist.demo import make_dataset
from cbir_dist.errors import WeightsError
from cbir_dist.store import VectorStore

DESCRIPTORS = ["--backbone", "none", "--descriptors", "correlogram,gabor"]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("exit")
    data = make_dataset(root / "data", per_class=2, size=40)  # 6 classes x 2
    db = str(root / "e.db")
    assert main(["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(root / "run"),
                 *DESCRIPTORS]) == 0
    return data, db


def _collections(db) -> list[str]:
    with VectorStore(db, "x") as s:
        return s.list_collections()


def test_query_exits_1_when_any_query_failed_and_says_how_many(indexed, tmp_path, capsys):
    data, db = indexed
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    good = sorted(data.rglob("*.png"))[0]
    assert main(["query", str(fake), "--db", db, "--collection", "c", "-k", "2"]) == 1
    cap = capsys.readouterr()
    assert "1 query, 1 failed" in cap.out and "1 of 1 query could not be answered" in cap.err
    out = tmp_path / "hits.csv"
    assert main(["query", str(fake), str(good), "--db", db, "--collection", "c", "-k", "2", "--out", str(out)]) == 1
    cap = capsys.readouterr()
    assert "2 queries, 1 failed" in cap.out and "1 of 2 queries could not be answered" in cap.err
    assert "error column" in cap.err and out.is_file()  # the answered query's rows are still written
    assert main(["query", str(good), "--db", db, "--collection", "c", "-k", "2"]) == 0


def test_classify_exits_1_when_an_image_failed(indexed, tmp_path, capsys):
    data, db = indexed
    folder = tmp_path / "imgs" / "cls"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG junk")
    good = sorted(data.rglob("*.png"))[0]
    (folder / "good.png").write_bytes(good.read_bytes())
    assert main(["classify", str(tmp_path / "imgs"), "--db", db, "--collection", "c", "-k", "1"]) == 1
    cap = capsys.readouterr()
    assert "2 images, 1 failed" in cap.out and "1 of 2 images could not be answered" in cap.err
    assert "broken.png" in cap.err  # the reason is shown when no --out table keeps it
    (folder / "broken.png").unlink()
    assert main(["classify", str(tmp_path / "imgs"), "--db", db, "--collection", "c", "-k", "1"]) == 0


def test_index_of_only_bad_files_exits_1_and_leaves_no_collection(tmp_path, capsys):
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"junk" * (i + 1))
    db = str(tmp_path / "b.db")
    assert main(["index", str(tmp_path / "bad"), "--db", db, "--collection", "c", "--run-dir",
                 str(tmp_path / "run"), *DESCRIPTORS]) == 1
    cap = capsys.readouterr()
    assert "indexed 0, duplicates 0, rejected 3" in cap.out
    assert "every one of the 3 file(s) was rejected" in cap.err and "errors.parquet" in cap.err
    assert "the first: " in cap.err and "not a readable image" in cap.err  # why, without opening the table
    assert "c" not in _collections(db)


def test_a_failed_first_run_leaves_no_collection_and_the_next_spec_is_free(tmp_path, monkeypatch, capsys):
    """The README's first command, offline: the weights cannot be had. No empty collection with the
    failed spec may stay behind to refuse the next run's other backbone."""
    data = make_dataset(tmp_path / "data", per_class=2, size=40)
    db = str(tmp_path / "f.db")
    import cbir_dist.features.extract as extract

    def offline(*a, **k):
        raise WeightsError("cannot download the weights (offline)")

    monkeypatch.setattr(extract.Extractor, "__init__", offline)
    args = ["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--backbone", "mobilenet_v2", "--weights", "random", "--descriptors", "gabor"]) == 1
    assert "offline" in capsys.readouterr().err
    assert "c" not in _collections(db)
    monkeypatch.undo()
    assert main([*args, *DESCRIPTORS]) == 0
    assert "indexed 12," in capsys.readouterr().out


def test_an_empty_collection_with_another_spec_is_rebuilt_silently(tmp_path, capsys):
    """An empty collection (e.g. a run killed before its first write) holds nothing a new spec contradicts."""
    data = make_dataset(tmp_path / "data", per_class=2, size=40)
    db = str(tmp_path / "s.db")
    from cbir_dist.features.profiles import build_spec

    other = build_spec(backbone="none", descriptors=["gabor"], mode="paper")
    with VectorStore(db, "c") as s:
        s.create(other.dim, other.to_json())
    assert main(["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(tmp_path / "run"),
                 *DESCRIPTORS]) == 0
    assert "indexed 12," in capsys.readouterr().out


def test_a_spec_mismatch_in_index_names_the_difference_and_overwrite(indexed, tmp_path, capsys):
    data, db = indexed
    assert main(["index", str(data), "--db", db, "--collection", "c", "--run-dir", str(tmp_path / "run"),
                 "--backbone", "none", "--descriptors", "gabor"]) == 2
    err = capsys.readouterr().err
    assert "blocks ['gabor'] != collection's ['correlogram', 'gabor']" in err
    assert "--overwrite" in err and "query" not in err


def test_a_query_of_a_missing_collection_lists_those_that_exist(indexed, capsys):
    data, db = indexed
    photo = sorted(data.rglob("*.png"))[0]
    assert main(["query", str(photo), "--db", db, "-k", "2"]) == 2  # the default collection is 'images'
    err = capsys.readouterr().err
    assert "collection 'images' not found" in err and "it holds 'c': pick one with --collection" in err
