"""What a query job is given: image files, folders and glob patterns, in any mix, resolved to a list of files.

* a **folder** gives every image under it (as ``index`` lists it): the label of a file is the name
  of the folder holding it, and files directly inside the folder given have no label;
* a **file** is taken as given, whatever its extension (a file that is not an image gets an error
  row saying so); its label is the name of the folder holding it;
* a **glob pattern** (``*``, ``?``, ``[...]``, ``**`` for any depth; quote it so the shell leaves it
  alone) gives the image files and folders it matches, each as above.

A path that does not exist, a pattern that matches nothing and a folder (or pattern) with no image
in it are input errors naming the argument. A file named twice is queried once, where it first
appears. Each file keeps the folder it came from as its *root*: ``--masks DIR`` finds a query's mask
by its path relative to that root (files and pattern matches: by name).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..io.files import IMAGE_EXTENSIONS, ImageFile, list_images, text_entry

_MAGIC = ("*", "?", "[")


@dataclass
class QuerySet:
    """The files of a query job, in order, and the folder argument each came from (None for files)."""

    files: list[ImageFile] = field(default_factory=list)
    roots: dict[str, str | None] = field(default_factory=dict)

    def add(self, f: ImageFile, root: str | None) -> bool:
        if f.path in self.roots:
            return False
        self.files.append(f)
        self.roots[f.path] = root
        return True

    def __len__(self) -> int:
        return len(self.files)


def file_label(path: str | os.PathLike) -> str:
    """The label of a query given as a file: the name of the folder holding it."""
    return Path(os.path.abspath(path)).parent.name


def _is_pattern(text: str) -> bool:
    return any(c in text for c in _MAGIC)


def _add_folder(qs: QuerySet, folder: str, what: str, follow_symlinks: bool = False) -> int:
    files = list_images(folder, follow_symlinks=follow_symlinks)
    if not files:
        raise InputError(f"{what}: no image files in it (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sum(qs.add(f, folder) for f in files)


def resolve_queries(inputs: str | os.PathLike | Sequence[str | os.PathLike], *,
                    follow_symlinks: bool = False) -> QuerySet:
    """The query files named by ``inputs`` (folders, files and glob patterns), labelled; see the module doc.

    Raises :class:`~cbir_dist.errors.InputError` naming the first argument that gives nothing.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no queries given: name image files, folders or glob patterns")
    qs = QuerySet()
    for item in inputs:
        text = os.fspath(item)
        p = Path(text)
        if p.is_dir():
            _add_folder(qs, text, text, follow_symlinks)
        elif p.exists() or p.is_symlink():  # a broken link gets its error row, as in index
            qs.add(text_entry(text, file_label(text)), None)
        elif _is_pattern(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise InputError(f"{text}: the pattern matches no file or folder")
            images = 0
            for m in matches:
                if os.path.isdir(m):
                    for f in list_images(m, follow_symlinks=follow_symlinks):
                        images += 1
                        qs.add(f, m)
                elif Path(m).suffix.lower() in IMAGE_EXTENSIONS:
                    images += 1
                    qs.add(text_entry(m, file_label(m)), None)
            if not images:
                raise InputError(
                    f"{text}: the pattern matches {len(matches)} path(s) but no image file "
                    f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
        else:
            raise InputError(f"{text}: no such file or folder")
    return qs
