"""Files on disk: listing labelled image folders safely, reading only regular files, content ids, digests.

The listing accounts for every entry with an image extension: a file that cannot be used (a FIFO,
socket or device, a broken symlink, a symlink leaving the input root) is listed with the reason it
will be rejected, so the count of files found is the count a job must account for, and nothing is
ever opened that could block. Symlinked directories inside the root are followed once (a second
link to the same folder, or a cycle, is rejected with a reason); outside the root they are rejected
unless ``follow_symlinks``.

Paths and labels come out in the text form of :func:`~cbir_dist.io.text.path_text` (any name the
file system can hold, UTF-8 or not, as storable text); :func:`read_file` takes that form back.

A content id is a hash of a file's bytes, so re-indexing a file is an idempotent upsert and a
byte-identical copy under another path maps onto the same row.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .text import os_path, path_text, reserved_reason

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
#: the longest path and label (bytes of UTF-8, in text form) a stored row holds; longer ones are
#: rejected with a reason when listed (a non-UTF-8 byte takes 4 bytes in text form)
MAX_PATH_BYTES = 4096
MAX_LABEL_BYTES = 512
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: no genuine image is larger; a bigger file is rejected before it is read


def content_id(data: bytes) -> int:
    """Stable 63-bit id of a file's bytes (BLAKE2b), usable as a Milvus INT64 primary key.

    The same bytes always give the same id, so re-indexing a file is an idempotent upsert and a
    duplicate file under another path maps onto the same row.
    """
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (weights files, data listings), read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class ImageFile:
    """One entry found under a dataset root; ``label`` is its parent folder's name.

    ``reason`` is set when the listing already knows the entry cannot be used (it is then rejected
    with that reason without being opened).
    """

    path: str
    label: str
    reason: str = ""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _label(rel_parent: Path) -> str:
    return rel_parent.name if rel_parent.parts else ""


def list_images(root: str | os.PathLike, *, extensions=IMAGE_EXTENSIONS, follow_symlinks: bool = False
                ) -> list[ImageFile]:
    """Every entry with an image extension under ``root``, sorted by path, labelled by its parent folder.

    Entries that cannot be used carry a ``reason`` (see the module docstring); symlinked
    directories are entries too when they are rejected. Raises
    :class:`~cbir_dist.errors.InputError` when ``root`` is not a directory. See
    :func:`iter_images` for the same entries one at a time.
    """
    return list(iter_images(root, extensions=extensions, follow_symlinks=follow_symlinks))


def iter_images(root: str | os.PathLike, *, extensions=IMAGE_EXTENSIONS, follow_symlinks: bool = False):
    """:func:`list_images`, streamed: the entries one at a time, in the same (sorted) order.

    A depth-first walk whose folder entries are taken in the order of ``name + "/"`` yields full
    paths in sorted order without holding them all (memory: one folder listing per level).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory; give the folder holding the images" if root.exists()
                         else f"{root}: no such directory")
    real_root = os.path.realpath(root)
    visited = {real_root: str(root)}  # real folder -> the path it was first listed under
    yield from _walk(root, root, real_root, extensions, follow_symlinks, visited)


def text_entry(path: str | os.PathLike, label: str, reason: str = "") -> ImageFile:
    """An entry in text form (:func:`~cbir_dist.io.text.path_text`) from a path as ``os`` gives it;
    rejected when its name is ambiguous in that form or too long to be stored."""
    text, label = path_text(os.fspath(path)), path_text(label)
    if not reason:
        reason = reserved_reason(os.fspath(path)) or too_long_reason(text, label)
    return ImageFile(text, label, path_text(reason))


def too_long_reason(path: str, label: str) -> str:
    """Why a path or label (text form) is too long to be stored, or ""."""
    if len(path.encode()) > MAX_PATH_BYTES:
        return f"the path is {len(path.encode())} bytes long, over the {MAX_PATH_BYTES} a stored path holds"
    if len(label.encode()) > MAX_LABEL_BYTES:
        return f"the folder name (label) is {len(label.encode())} bytes long, over the {MAX_LABEL_BYTES} a label holds"
    return ""


def _walk(folder: Path, root: Path, real_root: str, extensions, follow_symlinks: bool, visited: dict):
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        yield text_entry(folder, _label(folder.relative_to(root).parent), f"unreadable folder: {exc.strerror or exc}")
        return
    plan = []  # (sort key, kind, entry): a folder sorts as "name/", so full paths come out sorted
    for e in entries:
        p = Path(e.path)
        rel = p.relative_to(root)
        if e.is_dir(follow_symlinks=False):
            plan.append((e.name + "/", "dir", p))
        elif e.is_symlink() and os.path.isdir(p):
            real = os.path.realpath(p)
            if not follow_symlinks and not _inside(real, real_root):
                plan.append((e.name, "file", text_entry(p, _label(rel.parent),
                             f"symlinked folder leaves the input root (points to {real}); "
                             "pass --follow-symlinks to read it")))
            elif real in visited:
                plan.append((e.name, "file", text_entry(p, _label(rel.parent),
                             f"symlinked folder already listed as {visited[real]} (a second link or a cycle)")))
            else:
                visited[real] = str(p)
                plan.append((e.name + "/", "dir", p))
        elif Path(e.name).suffix.lower() in extensions:
            plan.append((e.name, "file", text_entry(p, _label(rel.parent), _entry_reason(p, real_root, follow_symlinks))))
    for _key, kind, item in sorted(plan, key=lambda t: t[0]):
        if kind == "dir":
            yield from _walk(item, root, real_root, extensions, follow_symlinks, visited)
        else:
            yield item


def _entry_reason(p: Path, real_root: str, follow_symlinks: bool) -> str:
    """Why the listed file cannot be used, or ``""`` (it may still fail when read)."""
    try:
        if p.is_symlink():
            if not p.exists():
                return symlink_reason(p)
            real = os.path.realpath(p)
            if not follow_symlinks and not _inside(real, real_root):
                return f"symlink leaves the input root (points to {real}); pass --follow-symlinks to read it"
        st = p.stat()
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({_kind(st.st_mode)}): only regular files are read"
    return ""


def symlink_reason(p: str | os.PathLike) -> str:
    """Why a symlink that leads nowhere cannot be read: a loop, or a target that is not there."""
    import errno

    try:
        os.stat(p)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symlink loop (points to {os.readlink(p)}, which leads back to itself)"
    return f"broken symlink (points to {os.readlink(p)})"


def read_file(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes and ``stat`` of a regular file, never blocking on a FIFO or device swapped in after listing.

    Raises ``OSError`` (unreadable) and :class:`~cbir_dist.errors.InputError`, a ``ValueError`` (not a
    regular file, or over ``max_bytes`` — checked before reading), with messages fit for ``errors.parquet``.
    """
    fd = os.open(os_path(os.fspath(path)), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"not a regular file ({_kind(st.st_mode)}): only regular files are read")
        if st.st_size > max_bytes:
            raise InputError(f"file is {st.st_size} bytes, over the limit of {max_bytes} (--max-bytes); "
                             "raise it if the file is genuine")
        # one read of the whole file (one buffer of its size: chunks joined would hold it twice), plus
        # one byte more than stat said, to see a file growing past the limit; a short read goes on
        want = st.st_size + 1
        data = os.read(fd, want)
        if 0 < len(data) < want:
            chunks = [data]
            left = want - len(data)
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 30))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks) if len(chunks) > 1 else data
        if len(data) > max_bytes:
            raise InputError(f"file grew past the limit of {max_bytes} bytes (--max-bytes) while being read")
        return data, st
    finally:
        os.close(fd)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB: ``VmHWM`` of ``/proc/self/status``.

    Not ``getrusage(...).ru_maxrss``: Linux carries that high-water mark across ``exec``, so a job
    started from a big process would report its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

