"""`cbir-dist`: the one entry point. Subcommands import their heavy modules only when they run.

:func:`main` is the one place that turns errors into exit statuses (0 ok, 2 usage or input error,
1 runtime failure, 130 interrupted); the parser is in :mod:`.parser`, the subcommands in
:mod:`.commands`.
"""

from __future__ import annotations

import logging
import sys

from .commands import COMMANDS, _token, cmd_index  # noqa: F401 - re-exported for jobs/ and tests
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit status.

    0 on success; 2 for a usage or input error (a bad option, a missing folder, a query asking for
    other features than the collection's: :class:`~cbir_dist.errors.UsageError`); 1 for a runtime
    failure (the store, weights, a distributed stage, missing rows: any other
    :class:`~cbir_dist.errors.CbirError`, or an unexpected exception) and when part of the work could
    not be done (``query``/``classify``: any query image not answered; ``index``: every file
    rejected, nothing written; each command says so on stderr); 130 when interrupted.
    Errors print one line; ``-v`` adds the traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    # our own progress at INFO; other libraries (faiss, milvus-lite, ray) only warn unless -vv
    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cbir_dist").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from ..distributed.connect import defer_shutdown_on_error, shutdown_deferred
    from ..errors import CbirError, UsageError

    defer_shutdown_on_error()  # a failed job's error line must be printed before Ray goes down
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cbir-dist query ... | head`: the reader left (the recipe of Python's signal docs)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # noqa: BLE001 - the boundary: one line (a traceback with -v), an exit status
        if args.verbose:
            import traceback

            traceback.print_exc()
        from ..io.text import printable  # a file name in a message must not drive the terminal

        if isinstance(exc, CbirError):
            print(f"cbir-dist {args.command}: error: {printable(str(exc))}", file=sys.stderr, flush=True)
            code = 2 if isinstance(exc, UsageError) else 1
        elif isinstance(exc, OSError):  # the machine said no (a full or read-only disk): no bug of ours
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"cbir-dist {args.command}: error: cannot write or read {printable(where)}"
                  f"{exc.strerror or exc} (check the disk and the folder's permissions)", file=sys.stderr, flush=True)
            code = 1
        else:
            print(f"cbir-dist {args.command}: internal error: {type(exc).__name__}: {printable(str(exc))} "
                  "(rerun with -v for the traceback and report it)", file=sys.stderr, flush=True)
            code = 1
        shutdown_deferred()
        return code
