"""The subcommands of ``cbir-dist``: each fills a job's config from the parsed options and runs it.

Heavy modules are imported inside the commands, when they run.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _token(args) -> str | None:
    """The Milvus token: ``--token`` (discouraged), else the first line of ``--token-file``, else ``$MILVUS_TOKEN``."""
    import os

    from ..errors import UsageError

    if getattr(args, "token", None):
        return args.token
    if getattr(args, "token_file", None):
        try:
            lines = open(args.token_file, encoding="utf-8").read().splitlines()
        except OSError as exc:
            raise UsageError(f"--token-file {args.token_file}: cannot read it ({exc.strerror or exc})") from exc
        token = lines[0].strip() if lines else ""
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty: put the token (user:password or an API "
                             "key) on its first line")
        return token
    return os.environ.get("MILVUS_TOKEN") or None


def _spec_from_args(args):
    from ..features.profiles import (
        DEFAULT_DESCRIPTORS,
        PROFILES,
        build_spec,
        profile_spec,
    )

    overrides = {
        "backbone": args.backbone, "weights": args.weights, "descriptors": args.descriptors, "mode": args.fusion,
        "image_size": args.image_size, "weights_sha256": args.weights_sha256,
    }
    if args.profile:
        return profile_spec(args.profile, **overrides)
    base = PROFILES["default"]
    return build_spec(
        backbone=args.backbone or base["backbone"],
        weights=args.weights or "imagenet",
        image_size=224 if args.image_size is None else args.image_size,
        descriptors=DEFAULT_DESCRIPTORS if args.descriptors is None else args.descriptors,
        mode=args.fusion or base["mode"],
        weights_sha256=args.weights_sha256,
    )


def _check_weights(**paths: str | None) -> None:
    """The weights files named by options (``weights_override=...``) exist: a mistyped path is said
    before the work (exit status 2), not when a backbone loads."""
    from ..features.weights import check_weights_file

    for option, value in paths.items():
        check_weights_file(value, "--" + option.replace("_", "-"))


def _writable(path, what: str) -> None:
    """An output's folder can be written: checked before the job's work, not after it."""
    from ..io.tables import check_writable

    check_writable(path, what)


def cmd_index(args) -> int:
    from ..index import IndexConfig, run_index

    if args.run_dir:
        _writable(args.run_dir, "--run-dir")

    spec = _spec_from_args(args)
    _check_weights(weights=args.weights, weights_override=args.weights_override)
    from ..damage.hook import DamageConfig, damage_transform

    # with --fringe/--masks: index images with missing regions, reconstructed by --inpainter; with
    # --detect-mask: reconstructed through the missing region found in each image
    damage = DamageConfig(fringe=args.fringe, masks_dir=args.masks, missing_fraction=args.missing_fraction,
                          angle=args.angle, phase=args.phase, inpainter=args.inpainter, root=args.images_dir,
                          detect_mask=args.detect_mask)
    if damage.detect_mask:
        _check_estimator()
    cfg = IndexConfig(
        args.images_dir, db=args.db, collection=args.collection, token=_token(args), run_dir=args.run_dir,
        shard_size=args.shard_size, batch_size=args.batch_size, max_pixels=args.max_pixels, max_bytes=args.max_bytes,
        follow_symlinks=args.follow_symlinks,
        index_type=args.index_type, weights_override=args.weights_override, device=args.device,
        save_features=args.save_features, overwrite=args.overwrite, backend=args.backend,
        torch_threads=args.torch_threads, runtime=args.runtime, deep_actors=args.deep_actors, workers=args.workers,
        deep_resources=dict(args.deep_resource), damage=damage.describe() if damage.active else None,
    )
    summary = run_index(spec, cfg, transform=damage_transform(damage))
    print(summary.line())
    if summary.advice:
        print(summary.advice)
    if summary.planned == 0 and summary.rejected:
        errors = Path(summary.run_dir) / "errors.parquet"
        print(f"cbir-dist index: error: every one of the {summary.files} file(s) was rejected, nothing was "
              f"written; the reasons are in {errors}{_first_reason(errors)}", file=sys.stderr, flush=True)
        return 1
    return 0


def _first_reason(errors: Path) -> str:
    """``; the first: REASON`` from an index run's ``errors.parquet`` (or "" when unreadable): a user
    whose every file was rejected learns why without opening the table."""
    from ..index.summary import first_reason
    from ..io.text import printable

    reason = first_reason(errors)
    return f"; the first: {printable(reason)}" if reason else ""


def _check_estimator() -> None:
    """``--detect-mask``: the mask estimator's weights are there, before the job's work (cheap: no load)."""
    from ..damage.detect import check_estimator_weights

    check_estimator_weights()


def _damage_captions(args) -> tuple[str | None, str | None, str]:
    """Captions of the damaged and reconstructed views and of the hits row, for the query page."""
    through = " through the missing region found in it" if args.detect_mask else ""
    if args.fringe is None and args.masks is None:
        if not args.detect_mask:
            return None, None, f"top {args.k}"
        if args.inpainter == "none":
            return None, None, f"top {args.k} of the query, the missing region found in it zero-filled"
        return (None, f"reconstructed: {args.inpainter}{through}",
                f"top {args.k} of the query reconstructed by {args.inpainter}{through}")
    damaged = (f"damaged: fringe {args.fringe:g} Hz, {args.missing_fraction:.0%} missing" if args.fringe is not None
               else f"damaged: mask from {args.masks}")
    if args.inpainter == "none":
        return damaged + " (zero fill)", None, f"top {args.k} of the damaged query (zero fill{through})"
    return (damaged, f"reconstructed: {args.inpainter}{through}",
            f"top {args.k} of the query reconstructed by {args.inpainter}{through}")


def _nothing_found_lines(cols: dict, damaged: bool) -> list[str]:
    """``--detect-mask``: one line per query in which no missing region was found (not an error)."""
    from ..query.results import nothing_found

    how = "searched damaged, not reconstructed" if damaged else "searched as it is"
    return [f"no missing region found in {q}: {how}" for q in nothing_found(cols)]


def _check_page_path(path: str) -> None:

    from ..errors import UsageError

    if Path(path).is_dir():
        raise UsageError(f"--html {path} is a folder; give a file name like hits.html")


def cmd_query(args) -> int:
    from ..query.results import check_out_path, format_results, precision_table
    from ..query.search import QueryConfig, run_query

    if args.out:
        check_out_path(args.out)  # before the job runs, so its results are not lost at the end
    if args.html:
        _check_page_path(args.html)
        _writable(args.html, "--html")
    _check_weights(weights_override=args.weights_override)
    if args.detect_mask:
        _check_estimator()
    cfg = QueryConfig(
        db=args.db, collection=args.collection, token=_token(args), k=args.k, fringe=args.fringe,
        missing_fraction=args.missing_fraction, angle=args.angle, phase=args.phase, masks_dir=args.masks,
        inpainter=args.inpainter, detect_mask=args.detect_mask, exclude_self=args.exclude_self,
        batch_size=args.batch_size,
        weights_override=args.weights_override, device=args.device, max_pixels=args.max_pixels,
        max_bytes=args.max_bytes, backend=args.backend, follow_symlinks=args.follow_symlinks, runtime=args.runtime,
    )
    damaged, rebuilt, row_caption = _damage_captions(args)
    views = None
    if args.html:
        from ..query.page import QueryViews

        views = QueryViews(damaged, rebuilt, estimated=args.detect_mask)
    cols = run_query(args.queries, cfg, out=args.out, observe=views)
    from ..io.text import printable

    for line in _nothing_found_lines(cols, damaged is not None) if args.detect_mask else []:
        print(printable(line), file=sys.stderr, flush=True)
    if not args.out:
        print(format_results(cols))
    queries = list(dict.fromkeys(cols["query"]))
    failed = len({q for q, e in zip(cols["query"], cols["error"]) if e})
    # P@k only where it means something: k up to -k, and queries whose label (the name of their folder)
    # is a class of the collection, i.e. among the neighbours' labels (a photo in ~/Downloads is not)
    ks = sorted({k for k in (1, 5, 10) if k <= args.k} | {args.k})
    classes = {lb for lb in cols["label"] if lb}
    scored = len({q for q, ql, e in zip(cols["query"], cols["query_label"], cols["error"]) if ql in classes and not e})
    p = precision_table(cols, ks, labels=classes)
    lines = [f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'}, {failed} failed"
             + (f"; wrote {args.out}" if args.out else "")]
    if scored:
        lines.append("  ".join(f"P@{k} {p[k]:.1f}" for k in ks)
                     + f"  over {scored} quer{'y' if scored == 1 else 'ies'} from class folders (the folder's name "
                     f"is a neighbour's label; relevant = same label; "
                     f"{'own original excluded' if args.exclude_self else 'own original included'})")
    elif queries != [] and len(queries) > failed:
        lines.append("no P@k: no query's folder name (its label) is a neighbour's label")
    if args.html:
        from ..query.page import entries_from_results, write_page

        as_it_is = (f"top {args.k} of the query as it is (no missing region found in it)" if damaged is None else
                    f"top {args.k} of the damaged query, not reconstructed (no missing region found in it)")
        page = write_page(args.html, entries_from_results(cols, views, row_caption,
                                                          as_it_is if args.detect_mask else None),
                          title=f"cbir-dist query: {len(queries)} quer{'y' if len(queries) == 1 else 'ies'}",
                          summary=[f"collection {args.collection} in {args.db}; k = {args.k}; "
                                   + (rebuilt or damaged or ("missing region found in each query, zero-filled"
                                                             if args.detect_mask else "queries intact"))
                                   + ("; own original excluded" if args.exclude_self else ""), *lines])
        lines.append(f"page: {page}")
    print("\n".join(printable(line) for line in lines))
    return _failed_status("query", failed, len(queries), ("query", "queries"), "the error column of --out" if args.out else
                          "each failed query's reason above" + (f" and on {args.html}" if args.html else ""))


def _failed_status(command: str, failed: int, total: int, nouns: tuple[str, str], where: str) -> int:
    """Exit status 1 when any of ``total`` inputs could not be answered (the count on stderr), else 0."""
    if not failed:
        return 0
    print(f"cbir-dist {command}: error: {failed} of {total} {nouns[total != 1]} could not be "
          f"answered (see {where}); exit status 1", file=sys.stderr, flush=True)
    return 1


def cmd_info(args) -> int:
    from ..query.info import format_info, info_json, store_info

    facts = store_info(args.db, args.collection, token=_token(args))
    print(info_json(facts) if args.json else format_info(facts))
    return 0


def cmd_demo(args) -> int:
    from ..demo import format_table, run_demo

    _writable(args.out, "--out")
    _check_weights(weights=args.weights)
    result = run_demo(args.out, images=args.images, backbone=args.backbone, weights=args.weights,
                      per_class=args.per_class, queries_per_class=args.queries, runtime=args.runtime)
    print(result.summary.line())
    print(format_table(result.rows))
    found = ("; the first one's mask found in it: "
             f"{result.estimated['found']:.1%} missing, IoU {result.estimated['iou']:.2f} with the true one"
             if result.estimated else "")
    print(f"page: {result.page}   (open it in a browser: {result.n_page_queries} damaged queries and their "
          f"hits{found})")
    if not result.estimated:
        print(f"no query with its mask found in it (--detect-mask): {result.why_not_estimated}", file=sys.stderr)
    print("next: images like one photo, as a page:\n"
          f"  cbir-dist query PHOTO.jpg --db {result.db} --collection {result.collection} -k 5 --html hits.html")
    return 0


def cmd_evaluate(args) -> int:
    from ..errors import UsageError

    try:
        queries = None if str(args.queries).lower() == "all" else int(args.queries)
    except ValueError:
        raise UsageError(f"--queries {args.queries}: a number of queries per class, or 'all'") from None
    if queries is not None and queries < 1:
        raise UsageError(f"--queries must be >= 1 or 'all', got {queries}")
    _writable(args.out, "--out")
    for weights in args.weights.values():
        _check_weights(weights=weights)
    if args.profile in ("shape", "texture"):
        if args.detect_mask:
            raise UsageError(f"--detect-mask applies to the damaged-query evaluation (Table 2), not --profile "
                             f"{args.profile}")
        from ..evaluation.shapes import ShapeEvalConfig, run_shape_evaluate

        res = run_shape_evaluate(ShapeEvalConfig(args.dataset, args.out, profile=args.profile, seed=args.seed,
                                                 protocol=args.protocol, knn_k=args.knn_k, affine=args.affine,
                                                 ablation=args.ablation, n_coeffs=args.n_coeffs, sigma=args.sigma,
                                                 extreme_points=args.extreme_points, db=args.db, token=_token(args),
                                                 collection_prefix=args.collection_prefix))
        print(res["summary"])
        return 0
    from ..evaluation.damaged import EvalConfig, run_evaluate

    cfg = EvalConfig(
        args.dataset, args.out, frequencies=args.frequencies, backbones=args.backbones, inpainters=args.inpainters,
        descriptors=args.descriptors, fusion=args.fusion, profile=args.profile, weights=args.weights,
        repeats=args.repeats, queries=queries, protocol=args.protocol, missing_fraction=args.missing_fraction,
        k=args.k, seed=args.seed, backend=args.backend, db=args.db, token=_token(args),
        collection_prefix=args.collection_prefix, network_cpus=args.network_cpus, runtime=args.runtime,
        detect_mask=args.detect_mask, mask_estimator=args.mask_estimator,
    )
    res = run_evaluate(cfg)

    print((Path(args.out) / "table2.md").read_text())
    print(f"wrote {args.out}/results.json, table1.md, table2.md, report.html ({res['wall_seconds']:.0f} s)")
    return 0


def cmd_classify(args) -> int:
    from ..query.classify import run_classify

    if args.out:
        _writable(args.out, "--out")
    _check_weights(weights_override=args.weights_override)
    res = run_classify(args.images_dir, db=args.db, collection=args.collection, k=args.k, token=_token(args),
                       out=args.out, batch_size=args.batch_size, weights_override=args.weights_override,
                       device=args.device, max_pixels=args.max_pixels, runtime=args.runtime)
    line = f"{res['n']} images, {res['failed']} failed"
    if res["accuracy"] is not None:
        m = res["report"]["macro"]
        line += (f"; accuracy {100 * res['accuracy']:.1f} % over {res['labelled']} labelled images (k = {args.k}; "
                 f"macro precision {100 * m['precision']:.1f}, recall {100 * m['recall']:.1f}, "
                 f"specificity {100 * m['specificity']:.1f})")
    print(line + (f"; wrote {args.out}" if args.out else ""))
    if res["failed"] and not args.out:  # the reasons, since no table holds them
        bad = [(p, e) for p, e in zip(res["columns"]["path"], res["columns"]["error"]) if e]
        from ..io.text import printable

        for p, e in bad[:10]:
            print(f"  failed: {printable(p)}: {printable(e)}", file=sys.stderr)
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more (--out FILE.parquet keeps every reason)", file=sys.stderr)
    return _failed_status("classify", res["failed"], res["n"], ("image", "images"),
                          f"the error column of {args.out}" if args.out else "the reasons above")


def cmd_train_inpainter(args) -> int:
    import json

    from ..training.job import run_from_args

    for option in ("out", "weights_out", "checkpoint_dir"):
        if getattr(args, option):
            _writable(getattr(args, option), "--" + option.replace("_", "-"))
    result = run_from_args(args, "cbir-dist train-inpainter " + " ".join(sys.argv[2:]))
    print(json.dumps({k: result[k] for k in ("step", "val", "weights")}, indent=2, default=str))
    return 0


def cmd_train_mask_estimator(args) -> int:
    import json

    from ..training.mask_estimator import run_from_args

    for option in ("out", "weights_out"):
        if getattr(args, option):
            _writable(getattr(args, option), "--" + option.replace("_", "-"))
    meta = run_from_args(args)
    print(json.dumps({"step": meta["step"], "val": meta["final_validation"],
                      "weights": args.weights_out or str(Path(args.out) / "mask_estimator.pt")}, indent=2))
    return 0


COMMANDS = {"train-mask-estimator": cmd_train_mask_estimator, "train-inpainter": cmd_train_inpainter, "index": cmd_index, "query": cmd_query, "evaluate": cmd_evaluate, "demo": cmd_demo,
            "classify": cmd_classify, "info": cmd_info}
