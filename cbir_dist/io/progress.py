"""The one progress bar of the jobs: tqdm's, with its ETA, on stderr; or a no-op with the same methods.

Every job that can take more than a few seconds shows one (index, query, classify, evaluate):
``bar = progress(total, enabled, "query", "img")``, then ``bar.update(n)`` as work finishes,
``bar.note(line)`` for a line of its own above the bar (what just finished), ``bar.close()`` at the
end (or ``with progress(...) as bar``). Disabled (a job inside another, tests), it prints nothing.
"""

from __future__ import annotations

from functools import lru_cache


class NullBar:
    """The no-op bar: the methods of :func:`progress`'s bar, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def note(self, line: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@lru_cache(maxsize=None)
def _bar_class():
    from tqdm.auto import tqdm

    class Bar(tqdm):
        """tqdm's bar with :meth:`note`."""

        def note(self, line: str) -> None:
            """Print ``line`` above the bar, on the bar's own stream (``tqdm.write`` alone goes to stdout)."""
            tqdm.write(line, file=self.fp)

    return Bar


def progress(total: int, enabled: bool = True, desc: str | None = None, unit: str = "it", *, file=None):
    """A tqdm bar of ``total`` ``unit``\\s with tqdm's ETA (on ``file``, default stderr), or a
    :class:`NullBar` when ``enabled`` is False; both have ``note(line)`` besides tqdm's
    ``update``, ``set_postfix_str`` and ``close``."""
    if not enabled:
        return NullBar()
    return _bar_class()(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=file)
