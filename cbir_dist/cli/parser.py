"""The argument parser of ``cbir-dist``: every subcommand and its options (nothing heavy is imported)."""

from __future__ import annotations

import argparse

from ..io.cpu import cores_available

EPILOG = """examples:
  cbir-dist demo                                      # generate, index and query a small set end to end
  cbir-dist index ./photos --db ./cbir.db --backbone mobilenet_v2   # default backbone: resnet50
  cbir-dist query photo.jpg --db ./cbir.db -k 5 --html hits.html      # images like this one, as a page
  cbir-dist query ./queries --db ./cbir.db --fringe 6 --inpainter telea --exclude-self --out hits.parquet
  cbir-dist query torn.jpg --db ./cbir.db --detect-mask --inpainter telea --html hits.html   # no mask file
  cbir-dist info --db ./cbir.db --collection images   # spec, rows, index, runs, size on disk

Weights: --weights imagenet uses torchvision's weights API (downloaded once into $TORCH_HOME);
--weights PATH loads a local state dict; --backbone none uses the handcrafted descriptors only.
A Milvus server is addressed by URI: --db http://host:19530, its credentials taken from
$MILVUS_TOKEN (user:password or an API key) or --token-file FILE (kept out of `ps` and job logs)."""


def _add_store_args(p: argparse.ArgumentParser, collection: str | None = "images") -> None:
    p.add_argument("--db", default="cbir.db",
                   help="milvus-lite path (a local directory, default ./cbir.db) or a Milvus server URI http://host:19530")
    if collection is None:
        p.add_argument("--collection", default=None, help="the collection to describe (default: list them)")
    else:
        p.add_argument("--collection", default=collection, help=f"collection name (default: {collection})")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the Milvus server token (user:password or an API key); default: $MILVUS_TOKEN")
    p.add_argument("--token", default=None, help=argparse.SUPPRESS)  # visible in `ps`: prefer the two above


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights-override", dest="weights_override", default=None, metavar="WEIGHTS",
                   help="load the deep block's weights from here instead of what the collection's spec names "
                        "(a state-dict PATH, imagenet, or random); the spec is unchanged")
    p.add_argument("--device", default=None, type=_device, help="torch device for the backbone (default: cuda if available, else cpu)")
    _add_runtime_arg(p)
    p.add_argument("--batch-size", type=_int_in(1), default=32, help="images per backbone batch (default: 32)")
    p.add_argument("--max-pixels", type=_int_in(1), default=100_000_000,
                   help="reject images with more pixels than this (decompression bombs; default 1e8); "
                        "the one pixel limit: no other check rejects an image this allows")
    p.add_argument("--max-bytes", type=_int_in(1), default=1 << 30,
                   help="reject files larger than this before reading them (default 1 GiB)")


def _add_runtime_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", default="auto", choices=RUNTIMES,
                   help="what runs the backbone: auto (the default) = ONNX Runtime on a CPU (its export cached "
                        "beside the weights), torch with bf16 autocast on a GPU; torch; onnx (CPU). Features agree "
                        "within 1e-4, so a collection indexed with one is queried with the other")


def _add_damage_args(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fringe", type=float, default=None, metavar="HZ",
                   help=f"damage each {what} with a fringe mask of this frequency (fringes per image, 0.5-6)")
    g.add_argument("--masks", default=None, metavar="DIR",
                   help=f"damage each {what} with the mask of the same name in DIR (white = known, black = missing)")
    p.add_argument("--missing-fraction", type=float, default=0.25, help="fringe: fraction of pixels removed (0.25)")
    p.add_argument("--phase", type=float, default=0.0, help="fringe: phase in radians (default 0)")
    p.add_argument("--angle", type=float, default=0.0, help="fringe: orientation in degrees (default 0)")
    p.add_argument("--inpainter", default="none",
                   help=f"reconstruct damaged {what}s with: none (zero fill), telea, ns, biharmonic, two-stage")
    p.add_argument("--detect-mask", action="store_true",
                   help="find the missing region in each image itself (no mask file needed) and reconstruct "
                        "through it; with --fringe/--masks: after that damage")


def _int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi] (a bad value is a usage error, exit 2, before any work)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range: give {lo}" + (f" to {hi}" if hi else " or more"))
        return value
    parse.__name__ = "int"
    return parse


def _device(text: str) -> str:
    """An argparse type: a torch device name (checked by its form; whether it exists, when it is used)."""
    import re

    if not re.fullmatch(r"(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)", text):
        raise argparse.ArgumentTypeError(f"{text!r} is no torch device: use cpu, cuda, cuda:N or mps")
    return text


#: what may run a backbone (cbir_dist.features.onnx_runtime.RUNTIMES; kept here so --help imports nothing)
RUNTIMES = ("auto", "torch", "onnx")

#: the most neighbours one search returns (Milvus' limit)
MAX_K = 16384


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _numbers(kind: type, what: str):
    """An argparse type: a comma-separated list of finite numbers of ``kind`` (float or int), as a tuple."""
    import math

    def parse(text: str) -> tuple:
        values = []
        for item in _csv(text):
            try:
                value = kind(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not {what}; give e.g. 1,2,3") from None
            if not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"{item!r} is not a finite number")
            values.append(value)
        return tuple(values)
    parse.__name__ = "list"
    return parse


def _assignment(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=VALUE``, as ``(NAME, VALUE)``."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name.strip(), value.strip()


def _assignments(text: str) -> dict[str, str]:
    """An argparse type: comma-separated ``NAME=VALUE`` pairs, as a dict."""
    return dict(_assignment(item) for item in _csv(text))


def _resource(text: str) -> tuple[str, float]:
    """An argparse type: a Ray resource request ``NAME=AMOUNT`` with a positive AMOUNT."""
    import math

    name, amount = _assignment(text)
    try:
        value = float(amount)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: the amount must be a positive number, as in deep=1")
    return name, value


class CliParser(argparse.ArgumentParser):
    """The parser of ``cbir-dist`` and its subcommands: an error is one line, then exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="cbir-dist",
        description="Content-based image retrieval at cluster scale, robust to queries with missing regions.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # index
    p = sub.add_parser("index", help="describe a folder of images and write the vectors to a Milvus collection",
                       description="Index IMAGES_DIR (class = parent folder name) into a Milvus collection. "
                                   "Reruns resume: finished shards and images already stored are skipped.")
    p.add_argument("images_dir", metavar="IMAGES_DIR")
    _add_store_args(p)
    p.add_argument("--profile", default=None, choices=["default", "paper", "shape", "texture"],
                   help="a named feature recipe (default: 'default' = resnet50 + correlogram + gabor, balanced)")
    p.add_argument("--backbone", default=None,
                   help="resnet50 (the paper's; the default: its ImageNet weights, ~100 MB, are downloaded on first "
                        "use), vgg16, vgg19, mobilenet_v2 (~14 MB, fast on a CPU), or none (descriptors only)")
    p.add_argument("--weights", default=None,
                   help="imagenet (the default: torchvision's, downloaded once into $TORCH_HOME), random (tests), "
                        "or a state-dict PATH")
    p.add_argument("--weights-sha256", default=None, help="expected sha256 of --weights PATH")
    p.add_argument("--descriptors", type=_csv, default=None,
                   help="comma-separated handcrafted blocks: correlogram,gabor,glcm,fourier_shape")
    p.add_argument("--fusion", default=None, choices=["paper", "balanced", "standardized"],
                   help="paper = plain concatenation; balanced = per-block L2 + weights; standardized = z-scores "
                        "fitted on the collection")
    p.add_argument("--image-size", type=int, default=None, help="backbone input size (default 224)")
    p.add_argument("--index-type", default="FLAT", choices=["FLAT", "HNSW", "IVF_FLAT"],
                   help="FLAT = exact search (default); HNSW / IVF_FLAT = approximate, faster on large collections")
    p.add_argument("--run-dir", default=None,
                   help="where the shard markers, manifest, errors and stats go (default runs/index-COLLECTION-HASH, "
                        "one per store URI and collection; markers record the target they vouch for either way)")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="also index files and folders that symlinks inside IMAGES_DIR point to outside it")
    p.add_argument("--shard-size", type=_int_in(1), default=256, help="files per resumable shard (default 256)")
    p.add_argument("--save-features", action="store_true",
                   help="also keep per-block features as Parquet shards in the run dir (re-weight without recomputing)")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild the collection from IMAGES_DIR alone: built beside the old one, which it "
                        "replaces only when the job succeeds (the run's shards start over)")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local = this machine (the default); ray = Ray Data pipeline on the Ray cluster in "
                        "$RAY_ADDRESS, else a local one")
    p.add_argument("--workers", type=_int_in(1), default=None, metavar="N",
                   help="local: N worker processes decode, damage and describe the shards, this process writes "
                        "(default: the cores it may use, here %d, never more than the shards to do; 1: this "
                        "process alone)" % cores_available())
    _add_damage_args(p, "image")
    p.add_argument("--torch-threads", type=_int_in(1), default=None,
                   help="threads per backbone process (default: 1 in each worker process — the local backend's "
                        "pool, Ray's without GPUs — else torch's own choice)")
    p.add_argument("--deep-actors", type=_int_in(1), default=None,
                   help="ray: number of backbone actors (default: one per GPU); without GPUs, of tasks running "
                        "the whole pipeline at once (default: one per CPU)")
    p.add_argument("--deep-resource", type=_resource, action="append", default=[], metavar="NAME=AMOUNT",
                   help="ray: custom resource each backbone actor asks for, e.g. deep=1 to pin them to tagged nodes")
    _add_model_args(p)

    # query
    p = sub.add_parser("query", help="find the images most like each query image (optionally damaged and reconstructed)",
                       description="Search the collection with query images: image files, folders (every image "
                                   "under them) and glob patterns (quoted, e.g. 'shots/*.jpg'; ** for any depth), in "
                                   "any mix. A query's label is the name of the folder holding it (files directly "
                                   "inside a folder argument have none). Features are computed with the "
                                   "collection's own feature spec. Prints each query's top-k (rank, distance, label, "
                                   "path) unless --out is given; --html writes a page of thumbnails.")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="an image file, a folder of images or a glob pattern")
    _add_store_args(p)
    _add_damage_args(p, "query")
    p.add_argument("-k", type=_int_in(1, MAX_K), default=10, help=f"neighbours per query (default 10, at most {MAX_K})")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="also read files and folders that symlinks inside a query folder point to outside it")
    p.add_argument("--exclude-self", action="store_true",
                   help="drop the query's own original (same content id) from its neighbours")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the result table (one row per query and rank; with --detect-mask the fraction found "
                        "missing in estimated_missing) to FILE.parquet, FILE.csv or FILE.jsonl instead of printing it")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write a self-contained page: each query (damaged and reconstructed too; with "
                        "--detect-mask the region found missing, in red) and its top-k thumbnails, framed green "
                        "when the label matches the query's, red when not")
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="local = one process (the default); ray = decode, damage, inpaint and describe on the Ray "
                        "pipeline (GPU actors when present), search in this process")
    _add_model_args(p)

    # evaluate
    p = sub.add_parser("evaluate", help="reproduce the paper's Tables 1-2 and Fig. 6 across frequencies, "
                                        "inpainters and backbones, in parallel",
                       description="Index DATASET_DIR (class-per-folder) once per backbone, damage the queries with "
                                   "fringe masks at each frequency, reconstruct them with each inpainter, and measure "
                                   "P@1/5/10, mAP, SSIM, FSIM and PSNR. Every (frequency, inpainter, backbone) cell "
                                   "runs as its own Ray task. Writes results.json, table1.md, table2.md, PNG plots, "
                                   "fig6.png and report.html to --out.")
    p.add_argument("dataset", metavar="DATASET_DIR")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--frequencies", type=_numbers(float, "a number"),
                   default=(0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0), help="fringe frequencies in Hz (0.5,1,...,6)")
    p.add_argument("--backbones", type=lambda t: tuple(_csv(t)), default=("mobilenet_v2",),
                   help="comma-separated: resnet50,vgg16,vgg19,mobilenet_v2 (default mobilenet_v2)")
    p.add_argument("--inpainters", type=lambda t: tuple(_csv(t)), default=("none", "telea"),
                   help="comma-separated: none,telea,ns,biharmonic,two-stage (default none,telea)")
    p.add_argument("--descriptors", type=lambda t: tuple(_csv(t)), default=("correlogram", "gabor"),
                   help="handcrafted blocks fused with the deep features (default correlogram,gabor)")
    p.add_argument("--fusion", default="balanced", choices=["paper", "balanced", "standardized"],
                   help="how blocks are fused: paper = plain concatenation; balanced (default) = per-block L2 + "
                        "weights; standardized = z-scores fitted on the collection")
    p.add_argument("--profile", default=None, choices=["default", "paper", "shape", "texture"],
                   help="shape/texture run the Pande et al. evaluation (KNN, bull's-eye, affine repository)")
    p.add_argument("--weights", type=_assignments, default={},
                   metavar="NAME=W,...", help="per-backbone weights overrides, e.g. vgg16=/models/vgg16.pth")
    p.add_argument("--repeats", type=_int_in(1), default=1, help="mask phases per frequency (std is over repeats)")
    p.add_argument("--queries", default="100", help="number of queries drawn per class evenly, or 'all' (100)")
    p.add_argument("--protocol", default="exclude-self", choices=["exclude-self", "include-self"],
                   help="exclude-self (default): a query's own original is not a neighbour")
    p.add_argument("--missing-fraction", type=float, default=0.25, help="fraction of pixels each mask removes")
    p.add_argument("-k", type=_int_in(1, MAX_K), default=10, help="neighbours for P@k (default 10)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed: the query draw and the masks' phases; shape: the affine copies (default 0)")
    p.add_argument("--backend", default="ray", choices=["ray", "local"],
                   help="ray (default): cells as Ray tasks on $RAY_ADDRESS or a local Ray; local: one process")
    p.add_argument("--network-cpus", type=float, default=None, metavar="N",
                   help="CPUs each network-inpainter actor reserves on a cluster without GPUs (default 0: it "
                        "shares the cores with the tasks; with GPUs every actor takes one GPU)")
    p.add_argument("--detect-mask", action="store_true",
                   help="also reconstruct the same damaged queries through the mask estimated in each damaged "
                        "image (not the true one): an 'estimated mask' row beside every true-mask row of "
                        "Table 2, and per frequency the mean IoU of the estimated missing region with the true one")
    p.add_argument("--mask-estimator", default="network", choices=["network", "classical"],
                   help="--detect-mask's estimator: network (default; the shipped cbir_dist/weights/"
                        "mask_estimator.pt) or classical (the dark-pixel baseline)")
    _add_runtime_arg(p)
    p.add_argument("--db", default=None,
                   help="milvus-lite path or Milvus server URI http://host:19530 (default: OUT/eval.db)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding the Milvus server token; default: $MILVUS_TOKEN")
    p.add_argument("--collection-prefix", default="", metavar="PREFIX",
                   help="prepended to the collections evaluate writes (eval_<backbone>; shape, shape_affine, "
                        "texture), so several runs can share one server (default: none)")
    g = p.add_argument_group("--profile shape|texture (Pande et al.: KNN, bull's-eye, affine repository)")
    g.add_argument("--knn-k", type=_numbers(int, "a whole number"), default=(1, 3, 5), metavar="K,...",
                   help="neighbours voting in the KNN classification (default 1,3,5)")
    g.add_argument("--affine", action=argparse.BooleanOptionalAction, default=True,
                   help="shape: also build, index and score the affine repository (default on)")
    g.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="also score descriptor variants by numpy retrieval (default on)")
    g.add_argument("--n-coeffs", type=_int_in(1), default=None, help="shape: Fourier coefficients (profile: 10)")
    g.add_argument("--sigma", type=float, default=None, help="shape: contour smoothing in px (profile: 1)")
    g.add_argument("--extreme-points", action=argparse.BooleanOptionalAction, default=None,
                   help="shape: append the 4 extreme-point features (profile: on)")

    # train-inpainter
    p = sub.add_parser("train-inpainter", help="train the two-stage inpainting network (Ray Train, resumable)",
                       description="Train the two-stage coarse-to-fine inpainting network (a residual on a Telea "
                                   "pre-fill) on class-per-folder image directories, with fringe and free-form masks "
                                   "drawn per crop; the defaults repeat the run of the shipped weights. --out is the run "
                                   "folder (metrics, training curve, checkpoints, snapshots; a rerun resumes); the weights go to "
                                   "--weights-out (default OUT/two_stage.pt); shipped in cbir_dist/weights/ with their "
                                   "provenance JSON they become what --inpainter two-stage loads.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from ..training.job import add_arguments as add_train_arguments

    add_train_arguments(p)

    # train-mask-estimator
    p = sub.add_parser("train-mask-estimator", help="train the network that finds the missing region of a damaged photo",
                       description="Train the mask estimator (--detect-mask) on class-per-folder image directories: crops "
                                   "damaged by fringe and free-form masks filled with black, white or a flat colour, then "
                                   "resized and JPEG-compressed as a photo travels. --out is the run folder (metrics, "
                                   "checkpoints; a rerun resumes); the weights go to --weights-out (default "
                                   "OUT/mask_estimator.pt) with their provenance JSON beside them.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from ..training.mask_estimator import add_arguments as add_mask_train_arguments

    add_mask_train_arguments(p)

    # demo
    p = sub.add_parser("demo", help="index a labelled set, query it intact and damaged, print P@1/5/10, write a page",
                       description="End-to-end demo in a local milvus-lite collection: index --images DIR (class = "
                                   "parent folder name) or a generated set (8 classes x 12 images), query it intact "
                                   "and damaged by fringe masks at 0.5 and 6 Hz, zero-filled and reconstructed by "
                                   "Telea, print P@1/5/10 and write an HTML page of damaged queries and their hits, "
                                   "opening with one whose mask is not given but found in it (--detect-mask's path; "
                                   "when the mask estimator is installed). About a minute on 2 CPU cores.")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="index and query this class-per-folder image set instead of generating one")
    p.add_argument("--out", default="demo_out", help="folder for the images, the collection and results (demo_out)")
    p.add_argument("--backbone", default="mobilenet_v2", help="backbone (default mobilenet_v2; none = descriptors only)")
    p.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a state-dict PATH")
    _add_runtime_arg(p)
    p.add_argument("--per-class", type=_int_in(1), default=12, help="generated images per class (default 12)")
    p.add_argument("--queries", type=_int_in(1), default=12, metavar="N",
                   help="queries per class, spread evenly over each class (default 12)")

    # classify
    p = sub.add_parser("classify", help="predict each image's class by a vote of its k nearest neighbours",
                       description="Describe every image in IMAGES_DIR with the collection's feature spec and "
                                   "predict its class by a majority vote of its k nearest rows (ties: smaller "
                                   "summed distance). An image's own row, when stored, never votes. Prints the "
                                   "accuracy when the images sit in class folders.")
    p.add_argument("images_dir", metavar="IMAGES_DIR")
    _add_store_args(p)
    p.add_argument("-k", type=_int_in(1, MAX_K), default=5, help="neighbours voting (default 5)")
    p.add_argument("--out", default=None, metavar="FILE.parquet", help="write one row per image here")
    _add_model_args(p)

    # info
    p = sub.add_parser("info", help="what a collection holds: feature spec, rows, index, runs, size on disk",
                       description="Print a collection's feature spec (blocks, dims, weights, fusion, backbone and "
                                   "the identity of its weights), its row count, index type and parameters, the "
                                   "index runs recorded against it and, for milvus-lite, the store folder's size on "
                                   "disk. Without --collection, list the store's collections.")
    _add_store_args(p, collection=None)
    p.add_argument("--json", action="store_true", help="print the same facts as one JSON object (for scripts)")
    return parser
