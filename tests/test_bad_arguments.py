"""Every subcommand of ``cbir-dist`` against a table of bad arguments.

Each row is a mistake a user can make: a bad option value, a path that is not there, a bad store
URI, a collection that does not exist, a spec mismatch, ``-k`` beyond the store's limit. Each must
exit with status 2 and print ONE line on stderr, ``cbir-dist COMMAND: error: ...``, that says what
to do: no traceback, no "internal error". Every subcommand the parser knows must have rows here.
"""

from __future__ import annotations

import argparse

import pytest

from cbir_dist.cli import build_parser, main
from cbir_dist.demo import make_dataset

FAST = ["--backbone", "none", "--descriptors", "correlogram"]
#: evaluate, cut down so that a row the validation lets through still ends in seconds
EVAL = ["--backend", "local", "--frequencies", "1", "--backbones", "none", "--inpainters", "none", "--ablation"]
#: train-mask-estimator, cut down likewise
TRAIN_MASK = ["--steps", "1", "--batch-size", "1", "--crop-min", "32", "--crop-max", "32", "--val-images", "1",
              "--threads", "1"]
#: train-inpainter, cut down likewise
TRAIN = ["--no-ray", "--steps", "1", "--crop-min", "16", "--crop-max", "16", "--batch-size", "1", "--val-every", "0",
         "--snapshot-every", "0"]

# (command, what is wrong, argv with {placeholders} from the `world` fixture, what the one line says)
ROWS = [
    # index
    ("index", "no such images dir", ["index", "{tmp}/missing", "--db", "{tmp}/n.db", *FAST],
     "{tmp}/missing: no such directory"),
    ("index", "images dir is a file", ["index", "{img}", "--db", "{tmp}/n.db", *FAST],
     "{img}: not a directory; give the folder holding the images"),
    ("index", "--db ftp:// URI", ["index", "{data}", "--db", "ftp://host/x", *FAST], "ftp://host/x"),
    ("index", "--db not ending in .db", ["index", "{data}", "--db", "{txt}", *FAST], "{txt}"),
    ("index", "--db a regular file", ["index", "{data}", "--db", "{filedb}", *FAST], "{filedb}"),
    ("index", "--collection not a name", ["index", "{data}", "--db", "{tmp}/n.db", "--collection", "my-images", *FAST],
     "collection name 'my-images' is not valid: use letters, digits and underscores"),
    ("index", "--backbone unknown", ["index", "{data}", "--db", "{tmp}/n.db", "--backbone", "resnet5"],
     "unknown backbone 'resnet5'; choose one of"),
    ("index", "--descriptors unknown", ["index", "{data}", "--db", "{tmp}/n.db", "--backbone", "none",
                                        "--descriptors", "colour"], "unknown descriptor 'colour'"),
    ("index", "--descriptors empty, no backbone", ["index", "{data}", "--db", "{tmp}/n.db", "--backbone", "none",
                                                   "--descriptors", ","], "nothing to index"),
    ("index", "--image-size 0", ["index", "{data}", "--db", "{tmp}/n.db", "--backbone", "mobilenet_v2", "--weights",
                                 "random", "--descriptors", "", "--image-size", "0"], "give --image-size 32 or more"),
    ("index", "--weights missing file", ["index", "{data}", "--db", "{tmp}/n.db", "--backbone", "mobilenet_v2",
                                         "--weights", "{tmp}/no_such.pt", "--descriptors", ""],
     "--weights {tmp}/no_such.pt: no such file"),
    ("index", "--shard-size 0", ["index", "{data}", "--shard-size", "0", *FAST], "0 is out of range: give 1 or more"),
    ("index", "--workers 0", ["index", "{data}", "--workers", "0", *FAST], "0 is out of range: give 1 or more"),
    ("index", "--index-type unknown", ["index", "{data}", "--index-type", "IVF", *FAST], "invalid choice: 'IVF'"),
    ("index", "--runtime unknown", ["index", "{data}", "--runtime", "tensorrt", *FAST], "invalid choice: 'tensorrt'"),
    ("index", "--fringe 0", ["index", "{data}", "--db", "{tmp}/n.db", "--fringe", "0", *FAST],
     "--fringe must be a positive frequency"),
    ("index", "--fringe inf", ["index", "{data}", "--db", "{tmp}/n.db", "--fringe", "inf", *FAST],
     "--fringe must be a positive frequency in Hz (fringes per image), got inf"),
    ("index", "--angle nan", ["index", "{data}", "--db", "{tmp}/n.db", "--fringe", "2", "--angle", "nan", *FAST],
     "--angle must be a finite number, got nan"),
    ("index", "--missing-fraction 1.5", ["index", "{data}", "--db", "{tmp}/n.db", "--fringe", "2",
                                         "--missing-fraction", "1.5", *FAST], "--missing-fraction must lie in (0, 1)"),
    ("index", "--masks no such dir", ["index", "{data}", "--db", "{tmp}/n.db", "--masks", "{tmp}/nomasks", *FAST],
     "--masks {tmp}/nomasks: no such folder (it should hold one mask image per image"),
    ("index", "--inpainter unknown", ["index", "{data}", "--db", "{tmp}/n.db", "--fringe", "2", "--inpainter",
                                      "teela", *FAST],
     "--inpainter 'teela' is unknown; choose one of none, telea, ns, biharmonic, two-stage"),
    ("index", "--deep-resource without =", ["index", "{data}", "--db", "{tmp}/n.db", "--deep-resource", "gpu",
                                            *FAST], "argument --deep-resource: 'gpu' is not NAME=VALUE"),
    ("index", "--deep-resource not a number", ["index", "{data}", "--db", "{tmp}/n.db", "--deep-resource",
                                               "deep=lots", *FAST],
     "the amount must be a positive number, as in deep=1"),
    ("index", "--token-file missing", ["index", "{data}", "--db", "{tmp}/n.db", "--token-file", "{tmp}/nofile",
                                       *FAST], "--token-file {tmp}/nofile: cannot read it"),
    ("index", "--run-dir under a file", ["index", "{data}", "--db", "{tmp}/n.db", "--run-dir", "{txt}/run", *FAST],
     "--run-dir {txt}/run: {txt} is not a folder"),
    ("index", "spec mismatch", ["index", "{data}", "--db", "{db}", "--collection", "c", "--run-dir", "{tmp}/run",
                                "--backbone", "none", "--descriptors", "gabor"],
     "blocks ['gabor'] != collection's ['correlogram']. Index with the collection's own settings"),
    # query
    ("query", "no such query file", ["query", "{tmp}/nope.png", "--db", "{db}", "--collection", "c"],
     "{tmp}/nope.png: no such file or folder"),
    ("query", "pattern matching nothing", ["query", "{tmp}/*.jpeg", "--db", "{db}", "--collection", "c"],
     "the pattern matches no file or folder"),
    ("query", "--db no such store", ["query", "{img}", "--db", "{tmp}/none.db"], "no milvus-lite store there"),
    ("query", "--db ftp:// URI", ["query", "{img}", "--db", "ftp://host/x"], "ftp://host/x"),
    ("query", "--db not ending in .db", ["query", "{img}", "--db", "{txt}"], "{txt}"),
    ("query", "--db a regular file", ["query", "{img}", "--db", "{filedb}"], "{filedb}"),
    ("query", "--collection missing", ["query", "{img}", "--db", "{db}", "--collection", "photos"],
     "collection 'photos' not found in {db} (it holds 'c': pick one with --collection)"),
    ("query", "-k beyond the parser's limit", ["query", "{img}", "--db", "{db}", "-k", "20000"],
     "20000 is out of range: give 1 to 16384"),
    ("query", "-k beyond the store's limit", ["query", "{img}", "--db", "{db}", "--collection", "c", "-k", "16384",
                                              "--exclude-self"], "-k 16383"),
    ("query", "-k not a number", ["query", "{img}", "--db", "{db}", "-k", "ten"], "'ten' is not a whole number"),
    ("query", "--fringe negative", ["query", "{img}", "--db", "{db}", "--collection", "c", "--fringe", "-1"],
     "--fringe must be a positive frequency"),
    ("query", "--fringe and --masks", ["query", "{img}", "--db", "{db}", "--fringe", "1", "--masks", "{tmp}"],
     "not allowed with argument"),
    ("query", "--masks no such dir", ["query", "{img}", "--db", "{db}", "--collection", "c", "--masks",
                                      "{tmp}/nomasks"], "--masks {tmp}/nomasks: no such folder"),
    ("query", "--inpainter unknown", ["query", "{img}", "--db", "{db}", "--collection", "c", "--fringe", "2",
                                      "--inpainter", "teela"], "--inpainter 'teela' is unknown; choose one of"),
    ("query", "--out unknown format", ["query", "{img}", "--db", "{db}", "--collection", "c", "--out",
                                       "{tmp}/hits.xlsx"], "unknown format '.xlsx'"),
    ("query", "--html a folder", ["query", "{img}", "--db", "{db}", "--collection", "c", "--html", "{tmp}"],
     "is a folder; give a file name like hits.html"),
    ("query", "--device unknown", ["query", "{img}", "--db", "{db}", "--device", "gpu"], "'gpu' is no torch device"),
    ("query", "--backend unknown", ["query", "{img}", "--db", "{db}", "--backend", "spark"], "invalid choice"),
    ("query", "--weights-override missing file", ["query", "{img}", "--db", "{db}", "--collection", "c",
                                                  "--weights-override", "{tmp}/no_such.pt"],
     "--weights-override {tmp}/no_such.pt: no such file"),
    # classify
    ("classify", "no such images dir", ["classify", "{tmp}/missing", "--db", "{db}", "--collection", "c"],
     "{tmp}/missing: no such directory"),
    ("classify", "no images in the dir", ["classify", "{empty}", "--db", "{db}", "--collection", "c"],
     "no images found under {empty}: give a folder of image files"),
    ("classify", "--db no such store", ["classify", "{data}", "--db", "{tmp}/none.db"], "no milvus-lite store there"),
    ("classify", "--db ftp:// URI", ["classify", "{data}", "--db", "ftp://host/x"], "ftp://host/x"),
    ("classify", "--collection missing", ["classify", "{data}", "--db", "{db}", "--collection", "photos"],
     "collection 'photos' not found in {db} (it holds 'c': pick one with --collection)"),
    ("classify", "-k beyond the collection", ["classify", "{data}", "--db", "{db}", "--collection", "c", "-k", "100"],
     "-k 100 needs at least 100: give -k 5 or less"),
    ("classify", "-k beyond the store's limit", ["classify", "{data}", "--db", "{db}", "--collection", "c",
                                                 "-k", "16384"], "-k 16383"),
    ("classify", "-k 0", ["classify", "{data}", "--db", "{db}", "-k", "0"], "0 is out of range"),
    ("classify", "--out under a file", ["classify", "{data}", "--db", "{db}", "--collection", "c", "--out",
                                        "{txt}/p.parquet"], "--out {txt}/p.parquet: {txt} is not a folder"),
    # info
    ("info", "--db no such store", ["info", "--db", "{tmp}/none.db"], "no milvus-lite store there"),
    ("info", "--db ftp:// URI", ["info", "--db", "ftp://host/x"], "ftp://host/x"),
    ("info", "--db not ending in .db", ["info", "--db", "{txt}"], "{txt}"),
    ("info", "--db a regular file", ["info", "--db", "{filedb}"], "{filedb}"),
    ("info", "--collection missing", ["info", "--db", "{db}", "--collection", "photos"],
     "collection 'photos' not found in {db} (it holds 'c': pick one with --collection"),
    ("info", "--collection not a name", ["info", "--db", "{db}", "--collection", "my-images"],
     "collection name 'my-images' is not valid"),
    ("info", "--token-file empty", ["info", "--db", "{db}", "--token-file", "{emptyfile}"],
     "--token-file {emptyfile} is empty: put the token"),
    # evaluate
    ("evaluate", "no such dataset", ["evaluate", "{tmp}/missing", "--out", "{tmp}/ev", *EVAL], "no such directory"),
    ("evaluate", "--out under a file", ["evaluate", "{data}", "--out", "{txt}/ev", *EVAL],
     "--out {txt}/ev: {txt} is not a folder"),
    ("evaluate", "--queries not a number", ["evaluate", "{data}", "--out", "{tmp}/ev", "--queries", "few", *EVAL],
     "--queries few: a number of queries per class, or 'all'"),
    ("evaluate", "--queries 0", ["evaluate", "{data}", "--out", "{tmp}/ev", "--queries", "0", *EVAL],
     "--queries must be >= 1"),
    ("evaluate", "--frequencies not numbers", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--frequencies",
                                               "1,x"], "argument --frequencies: 'x' is not a number"),
    ("evaluate", "--frequencies 0", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--frequencies", "0,1"],
     "--frequencies must be positive (fringes per image, e.g. 0.5,1,6), got 0,1"),
    ("evaluate", "--backbones unknown", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--backbones", "vgg"],
     "unknown backbone 'vgg'"),
    ("evaluate", "--inpainters unknown", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--inpainters",
                                          "none,teela"], "--inpainters: unknown 'teela'; choose from"),
    ("evaluate", "--descriptors unknown", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--descriptors",
                                           "colour"], "unknown descriptor 'colour'"),
    ("evaluate", "--weights without =", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--weights", "vgg16"],
     "argument --weights: 'vgg16' is not NAME=VALUE"),
    ("evaluate", "--missing-fraction 0", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--missing-fraction",
                                          "0"], "--missing-fraction must lie in (0, 1)"),
    ("evaluate", "--network-cpus negative", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--network-cpus",
                                             "-1"], "--network-cpus must be a number of CPUs >= 0"),
    ("evaluate", "--db ftp:// URI", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "--db", "ftp://host/x"],
     "ftp://host/x"),
    ("evaluate", "--collection-prefix not a name", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL,
                                                    "--collection-prefix", "my-"],
     "collection prefix must be letters, digits and '_'"),
    ("evaluate", "--knn-k beyond the data set", ["evaluate", "{data}", "--out", "{tmp}/ev", "--profile", "shape",
                                                 "--knn-k", "50", "--no-affine", "--no-ablation"],
     "give --knn-k 5 or less"),
    ("evaluate", "-k deeper than the ranking", ["evaluate", "{data}", "--out", "{tmp}/ev", *EVAL, "-k", "200"],
     "give -k 100 or less"),
    ("evaluate", "--knn-k 0", ["evaluate", "{data}", "--out", "{tmp}/ev", "--profile", "shape", "--knn-k", "0,1",
                               "--no-affine", "--no-ablation"],
     "knn_k must be positive integers, e.g. (1, 3, 5)"),
    ("evaluate", "--knn-k not numbers", ["evaluate", "{data}", "--out", "{tmp}/ev", "--profile", "shape",
                                         "--knn-k", "one"], "argument --knn-k: 'one' is not a whole number"),
    ("evaluate", "--n-coeffs 0", ["evaluate", "{data}", "--out", "{tmp}/ev", "--profile", "shape", "--n-coeffs", "0",
                                  "--no-affine", "--no-ablation"], "argument --n-coeffs: 0 is out of range"),
    ("evaluate", "--sigma negative", ["evaluate", "{data}", "--out", "{tmp}/ev", "--profile", "shape", "--sigma",
                                      "-1", "--no-affine", "--no-ablation"], "--sigma must be a number of pixels >= 0"),
    # demo
    ("demo", "--images no such dir", ["demo", "--images", "{tmp}/missing", "--out", "{tmp}/demo"],
     "{tmp}/missing: no such directory"),
    ("demo", "--images empty", ["demo", "--images", "{empty}", "--out", "{tmp}/demo"], "no image files in it"),
    ("demo", "--backbone unknown", ["demo", "--backbone", "resnet5", "--out", "{tmp}/demo", "--per-class", "1"],
     "unknown backbone 'resnet5'"),
    ("demo", "--weights missing file", ["demo", "--weights", "{tmp}/no_such.pt", "--out", "{tmp}/demo",
                                        "--images", "{data}"], "--weights {tmp}/no_such.pt: no such file"),
    ("demo", "--out under a file", ["demo", "--out", "{txt}/demo"], "--out {txt}/demo: {txt} is not a folder"),
    ("demo", "--per-class 0", ["demo", "--per-class", "0"], "0 is out of range: give 1 or more"),
    # train-inpainter
    ("train-inpainter", "no such images dir", ["train-inpainter", "{tmp}/missing", "--out", "{tmp}/tr", *TRAIN],
     "no such image directory"),
    ("train-inpainter", "no images in the dir", ["train-inpainter", "{empty}", "--out", "{tmp}/tr", *TRAIN],
     "no image files under {empty}"),
    ("train-inpainter", "--config not JSON", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                              "--config", "{{channels: 8}}"], "--config is not JSON"),
    ("train-inpainter", "--config not an object", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                   "--config", "[8]"], "--config must be a JSON object"),
    ("train-inpainter", "--config unknown key", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                 "--config", '{{"channels": 8}}'], "unknown model config keys"),
    ("train-inpainter", "--config bad prefill", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                 "--config", '{{"prefill": "fast"}}'],
     "prefill must be 'telea' or 'ns', got 'fast'"),
    ("train-inpainter", "--crop-min not a multiple of 8", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                          "--crop-min", "12"], "multiples of 8"),
    ("train-inpainter", "--steps 0", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN, "--steps", "0"],
     "steps must be >= 1"),
    ("train-inpainter", "--lr 0", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN, "--lr", "0"],
     "lr must be > 0"),
    ("train-inpainter", "--weights-out a .json", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                  "--weights-out", "{tmp}/w.json"],
     "--weights-out {tmp}/w.json: the provenance is written beside the weights"),
    ("train-inpainter", "--val-split-file of other files", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                            "--val-split-file", "{split}"],
     "listed files are not under"),
    ("train-inpainter", "--threads negative", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN, "--threads",
                                               "-1"], "--threads must be 1 or more"),
    ("train-inpainter", "--num-workers 0", ["train-inpainter", "{data}", "--out", "{tmp}/tr", "--num-workers", "0"],
     "--num-workers must be >= 1, got 0"),
    ("train-inpainter", "--out under a file", ["train-inpainter", "{data}", "--out", "{txt}/tr", *TRAIN],
     "--out {txt}/tr: {txt} is not a folder"),
    ("train-inpainter", "--data-root not above the images", ["train-inpainter", "{data}", "--out", "{tmp}/tr", *TRAIN,
                                                             "--data-root", "{tmp}"],
     "is not under the data root {tmp} (--data-root): give a folder that holds every image directory"),
    ("train-inpainter", "--loss unknown", ["train-inpainter", "{data}", "--out", "{tmp}/tr", "--loss", "l2"],
     "invalid choice: 'l2'"),
    # train-mask-estimator
    ("train-mask-estimator", "no such images dir", ["train-mask-estimator", "{tmp}/missing", "--out", "{tmp}/me",
                                                    *TRAIN_MASK], "no such image directory"),
    ("train-mask-estimator", "no images in the dir", ["train-mask-estimator", "{empty}", "--out", "{tmp}/me",
                                                      *TRAIN_MASK], "no image files under {empty}"),
    ("train-mask-estimator", "--crop-min not a multiple of 16", ["train-mask-estimator", "{data}", "--out", "{tmp}/me",
                                                                *TRAIN_MASK, "--crop-min", "24"], "multiples of 16"),
    ("train-mask-estimator", "--steps 0", ["train-mask-estimator", "{data}", "--out", "{tmp}/me", *TRAIN_MASK,
                                           "--steps", "0"], "steps must be >= 1"),
    ("train-mask-estimator", "--lr 0", ["train-mask-estimator", "{data}", "--out", "{tmp}/me", *TRAIN_MASK,
                                        "--lr", "0"], "lr must be > 0"),
    ("train-mask-estimator", "--threads negative", ["train-mask-estimator", "{data}", "--out", "{tmp}/me", *TRAIN_MASK,
                                                    "--threads", "-1"], "--threads must be 1 or more"),
    ("train-mask-estimator", "--weights-out a .json", ["train-mask-estimator", "{data}", "--out", "{tmp}/me",
                                                       *TRAIN_MASK, "--weights-out", "{tmp}/w.json"],
     "--weights-out {tmp}/w.json: the provenance is written beside the weights"),
    ("train-mask-estimator", "--val-split-file of other files", ["train-mask-estimator", "{data}", "--out", "{tmp}/me",
                                                                 *TRAIN_MASK, "--val-split-file", "{split}"],
     "listed files are not under"),
    ("train-mask-estimator", "--out under a file", ["train-mask-estimator", "{data}", "--out", "{txt}/me", *TRAIN_MASK],
     "--out {txt}/me: {txt} is not a folder"),
]


def _id(row) -> str:
    return f"{row[0]}: {row[1]}"


def _params() -> list:
    return [pytest.param(*row, id=_id(row)) for row in ROWS]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The paths the rows name: a tiny indexed store (collection 'c'), its images, files of the wrong kind."""
    root = tmp_path_factory.mktemp("bad_arguments")
    data = make_dataset(root / "data", per_class=1, size=40)
    db = root / "w.db"
    assert main(["index", str(data), "--db", str(db), "--collection", "c", "--run-dir", str(root / "run"), *FAST]) == 0
    (root / "empty").mkdir()
    (root / "some.txt").write_text("not a store\n")
    (root / "file.db").write_text("a file, not a milvus-lite folder\n")
    (root / "empty_file").write_text("")
    (root / "split.txt").write_text("# held out\nelsewhere/x.png\n")
    return {"data": str(data), "db": str(db), "img": str(sorted(data.rglob("*.png"))[0]), "txt": str(root / "some.txt"),
            "filedb": str(root / "file.db"), "empty": str(root / "empty"), "emptyfile": str(root / "empty_file"),
            "split": str(root / "split.txt")}


def _run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # the parser's own errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command, what, argv, says", _params())
def test_a_bad_argument_exits_2_with_one_line_that_says_what_to_do(world, tmp_path, monkeypatch, capsys,
                                                                    command, what, argv, says):
    monkeypatch.chdir(tmp_path)  # default run and output folders land here
    names = {**world, "tmp": str(tmp_path)}
    code, err = _run([a.format(**names) for a in argv], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cbir-dist {command}: error: "), err
    assert says.format(**names) in lines[0], err
    assert "Traceback" not in err and "internal error" not in err


def test_every_subcommand_has_rows():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {row[0] for row in ROWS}
