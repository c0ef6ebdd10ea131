"""Ray job entry point for indexing: ``cbir-dist index`` with the Ray backend by default.

Submit it to a running cluster from the repository root (the working dir is shipped to the cluster):

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python jobs/index.py /data/photos --db http://MILVUS:19530 --token-file /shared/milvus.token \\
        --backbone resnet50

The images and the token file are read by absolute path where the job runs (the token never goes on
the command line, nor into ``--runtime-env-json``, which Ray keeps in the job's metadata).

It takes exactly the options of ``cbir-dist index`` (see ``python jobs/index.py --help``); only the
default of ``--backend`` differs (``ray``). Inside a Ray job ``RAY_ADDRESS`` is set, so the pipeline
joins the job's cluster. Exit code 0 when only individual files failed, non-zero when the job did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/index.py` from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir_dist import cli  # noqa: E402


def index_parser() -> argparse.ArgumentParser:
    """The ``index`` subparser of :func:`cbir_dist.cli.build_parser`, defaulting to the Ray backend."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    index = sub.choices["index"]
    index.prog = "python jobs/index.py"
    index.set_defaults(backend="ray")
    for action in index._actions:  # noqa: SLF001 - keep --help truthful about the new default
        if action.dest == "backend":
            action.help = (action.help or "") + " (default here: ray)"
    return index


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = index_parser().parse_args(argv)  # --help and usage errors exit here, with this script's name
    backend = [] if any(a == "--backend" or a.startswith("--backend=") for a in argv) else ["--backend", args.backend]
    return cli.main(["index", *argv, *backend])


if __name__ == "__main__":
    sys.exit(main())
