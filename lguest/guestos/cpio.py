"""newc cpio: the root image the guest kernel serves, and the tree it exports."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

TRAILER = "TRAILER!!!"

#: The guest kernel's inode table holds 16384 (kernel.c MAX_INODES), /dev and
#: the files a program creates included: the image leaves room for those.
MAX_ENTRIES = 16000


class ImageTooLarge(ValueError):
    """The root does not fit under the image cap."""


def _entry(name: str, mode: int, size: int, mtime: int, ino: int) -> bytes:
    raw = name.encode("utf-8", "surrogateescape") + b"\0"
    fields = (ino, mode, 0, 0, 1, mtime & 0xFFFF_FFFF, size, 0, 0, 0, 0, len(raw), 0)
    head = b"070701" + b"".join(b"%08x" % f for f in fields) + raw
    return head + b"\0" * (-len(head) % 4)


def pack_tree(root: str | os.PathLike[str] | None, extra: dict[str, bytes] | None = None,
              cap: int = 1 << 30, max_entries: int = MAX_ENTRIES) -> bytes:
    """A newc image of the host directory ``root`` (regular files, directories,
    symlinks; others skipped) plus ``extra`` files {path: bytes}.  Raises
    :class:`ImageTooLarge` once the image would pass ``cap`` bytes or
    ``max_entries`` entries, and OSError for a file or directory it cannot
    read.  Symlinks are packed as links (their target text), never followed:
    one pointing out of ``root`` or at ``root`` itself reads nothing outside."""
    # The pieces, joined once at the end: a file's bytes are copied once
    # more, not through a growing bytearray and a final bytes() (megabytes
    # of busybox and data copied three times over, each into fresh pages).
    out: list[bytes] = []
    size = 0
    ino = 1

    def add(name: str, mode: int, data: bytes, mtime: int) -> None:
        nonlocal ino, size
        ino += 1
        if ino - 1 > max_entries:
            raise ImageTooLarge(f"the root has more than {max_entries} files and directories, "
                                f"more than the guest kernel holds; give a smaller --root")
        piece = _entry(name, mode, len(data), mtime, ino)
        if size + len(piece) + len(data) + 128 > cap:
            raise ImageTooLarge(f"the root image passes its cap of {cap} bytes (at {name!r}); "
                                f"give more --memory or a smaller --root")
        pad = -len(data) % 4
        out.extend((piece, data, b"\0" * pad))
        size += len(piece) + len(data) + pad

    if root is not None:
        # An explicit stack, not os.walk: 3.11's os.walk recurses, and a deep
        # enough root would end in RecursionError.  Order as os.walk's top-down
        # walk: a directory's entries (subdirectories first, each group sorted),
        # then each subdirectory's in turn.
        todo: list[tuple[str, str]] = [(os.fspath(root), "")]
        while todo:
            dirpath, rel_dir = todo.pop()
            with os.scandir(dirpath) as it:
                kids = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            names = sorted(n for n, d in kids if d) + sorted(n for n, d in kids if not d)
            subdirs = []
            for name in names:
                full = os.path.join(dirpath, name)
                rel = f"{rel_dir}/{name}" if rel_dir else name
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    add(rel, st.st_mode, os.fsencode(os.readlink(full)), int(st.st_mtime))
                elif stat.S_ISDIR(st.st_mode):
                    add(rel, st.st_mode, b"", int(st.st_mtime))
                    subdirs.append((full, rel))
                elif stat.S_ISREG(st.st_mode):
                    if st.st_size > cap:
                        raise ImageTooLarge(f"{full}: {st.st_size} bytes, more than the image cap of {cap} bytes")
                    add(rel, st.st_mode, _read_capped(full, cap - size), int(st.st_mtime))
            todo.extend(reversed(subdirs))
    for name, data in (extra or {}).items():
        add(name.lstrip("/"), stat.S_IFREG | 0o755, data, 0)
    out.append(_entry(TRAILER, 0, 0, 0, 0))
    return b"".join(out)


def _read_capped(path: str, cap: int) -> bytes:
    """A regular file's bytes, at most ``cap`` (one that grows while we read
    hits the cap, not the host's memory); O_NOFOLLOW and O_NONBLOCK because
    it may have been swapped for a link or a fifo since the walk saw it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageTooLarge(f"{path}: no longer a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max(cap, 0) + 1)
    finally:
        os.close(fd)
    if len(data) > cap:
        raise ImageTooLarge(f"{path}: grew past the image cap while it was read")
    return data


def iter_newc(image: bytes) -> Iterator[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry up to the trailer; ValueError if malformed."""
    pos = 0
    while pos + 110 <= len(image):
        if image[pos:pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        f = [int(image[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_end = pos + 110 + namesize
        if namesize == 0 or name_end > len(image):
            raise ValueError("truncated cpio image")
        name = image[pos + 110:name_end - 1].decode("utf-8", "surrogateescape")
        data_at = name_end + (-name_end % 4)
        data = image[data_at:data_at + size]
        if len(data) != size:
            raise ValueError("truncated cpio image")
        if name == TRAILER:
            return
        yield name, mode, data
        pos = data_at + size + (-size % 4)
    raise ValueError("truncated cpio image: no trailer")


def data_offset(image: bytes, name: str) -> int | None:
    """Where the data of entry ``name`` (a path, leading ``/`` or not) starts in
    ``image``, or None.  lguest exec places the image so that the program's
    data lies page-aligned in guest memory: the kernel then maps the
    program's read-only pages from the image instead of copying them."""
    want = name.lstrip("/")
    pos = 0
    while pos + 110 <= len(image) and image[pos:pos + 6] == b"070701":
        size, namesize = int(image[pos + 54:pos + 62], 16), int(image[pos + 94:pos + 102], 16)
        name_end = pos + 110 + namesize
        data_at = name_end + (-name_end % 4)
        entry = image[pos + 110:name_end - 1].decode("utf-8", "surrogateescape")
        if entry == TRAILER:
            return None
        if entry == want:
            return data_at
        pos = data_at + size + (-size % 4)
    return None


class ExportRefused(ValueError):
    """An exported entry the host will not write (the message names it and says why)."""


#: Linux's NAME_MAX: the guest kernel refuses longer components, a hostile one may not.
NAME_MAX = 255


def _child(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _clear(dir_fd: int, name: str, st: os.stat_result | None, shown: str) -> None:
    """Make way for a new entry: a file, link, fifo or empty directory goes;
    a directory with the host's files in it stays, and the entry is refused."""
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        try:
            os.rmdir(name, dir_fd=dir_fd)
        except OSError as exc:
            raise ExportRefused(f"{shown!r}: a directory that is not empty is in the way on the host") from exc
    else:
        os.unlink(name, dir_fd=dir_fd)


def _open_dir(dir_fd: int, name: str, shown: str, create: bool) -> int:
    """The directory ``name`` under ``dir_fd``, never through a symlink (O_NOFOLLOW)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
        raise ExportRefused(f"{shown!r}: refusing to write through {name!r}, which is not a directory") from exc
    os.mkdir(name, 0o755, dir_fd=dir_fd)
    return os.open(name, flags, dir_fd=dir_fd)


def unpack_tree(image: bytes, dest: str | os.PathLike[str], max_entries: int = 1 << 14) -> int:
    """Write the entries of ``image`` (guest-controlled: the names, modes,
    link targets and contents are all the guest's) under ``dest``; returns
    how many.  Raises :class:`ExportRefused` (a ValueError) for an entry it
    will not write, and ValueError for a malformed image.

    Every path is walked from ``dest`` one component at a time with
    ``O_NOFOLLOW``, so no symlink -- one this image planted or one already in
    ``dest`` -- carries a write outside it; an existing file, link, fifo or
    hard link at an exported name is replaced (unlinked), never written
    through; setuid, setgid and sticky bits are dropped.  ``max_entries``
    (the guest kernel's inode table) bounds how many files a hostile image
    makes the host create."""
    base = Path(dest)
    base.mkdir(parents=True, exist_ok=True)
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    n = 0
    try:
        for name, mode, data in iter_newc(image):
            n += 1
            if n > max_entries:
                raise ExportRefused(f"more than {max_entries} entries, more than the guest kernel holds")
            parts = [p for p in name.split("/") if p not in ("", ".")]
            if not parts or ".." in parts or "\0" in name:
                raise ExportRefused(f"refusing cpio entry {name!r}")
            if any(len(os.fsencode(p)) > NAME_MAX for p in parts):
                raise ExportRefused(f"refusing cpio entry {name!r}: a name longer than {NAME_MAX} bytes")
            fd = base_fd
            try:
                for part in parts[:-1]:
                    new = _open_dir(fd, part, name, create=True)
                    if fd != base_fd:
                        os.close(fd)
                    fd = new
                _write_entry(fd, parts[-1], mode, data, name)
            finally:
                if fd != base_fd:
                    os.close(fd)
    finally:
        os.close(base_fd)
    return n


def _write_entry(dir_fd: int, leaf: str, mode: int, data: bytes, shown: str) -> None:
    st = _child(dir_fd, leaf)
    perm = stat.S_IMODE(mode) & 0o777   # never setuid/setgid/sticky from the guest
    if stat.S_ISDIR(mode):
        if st is not None and stat.S_ISDIR(st.st_mode):
            return
        _clear(dir_fd, leaf, st, shown)
        os.mkdir(leaf, 0o755, dir_fd=dir_fd)
    elif stat.S_ISLNK(mode):
        if b"\0" in data:
            raise ExportRefused(f"refusing symlink {shown!r}: its target holds a NUL byte")
        _clear(dir_fd, leaf, st, shown)
        os.symlink(os.fsdecode(data), leaf, dir_fd=dir_fd)
    elif stat.S_ISREG(mode):
        _clear(dir_fd, leaf, st, shown)
        # O_EXCL after the unlink: a new inode, so nothing the name pointed at is written
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, perm or 0o644)
        finally:
            os.close(fd)
