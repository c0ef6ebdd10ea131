"""Ray job entry point: ``cbir-dist query`` with the same options.

Submit it to a running cluster from the repository root (the working dir is shipped to the cluster):

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/query.py --help

Inside a Ray job ``RAY_ADDRESS`` is set, so the job's Ray work joins the job's cluster. A Milvus
server URI (``--db http://HOST:19530``, its token from ``--token-file FILE``, a path readable where
the job runs) is the store to use there.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jobs/query.py` from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cbir_dist import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return cli.main(["query", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
