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
    ``max_entries`` entries."""
    out = bytearray()
    ino = 1

    def add(name: str, mode: int, data: bytes, mtime: int) -> None:
        nonlocal ino
        ino += 1
        if ino - 1 > max_entries:
            raise ImageTooLarge(f"the root has more than {max_entries} files and directories, "
                                f"more than the guest kernel holds; give a smaller --root")
        piece = _entry(name, mode, len(data), mtime, ino)
        if len(out) + len(piece) + len(data) + 128 > cap:
            raise ImageTooLarge(f"the root image passes its cap of {cap} bytes (at {name!r}); "
                                f"give more --memory or a smaller --root")
        out.extend(piece)
        out.extend(data)
        out.extend(b"\0" * (-len(data) % 4))

    if root is not None:
        base = Path(root)
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    add(rel, st.st_mode, os.fsencode(os.readlink(full)), int(st.st_mtime))
                elif stat.S_ISDIR(st.st_mode):
                    add(rel, st.st_mode, b"", int(st.st_mtime))
                elif stat.S_ISREG(st.st_mode):
                    if st.st_size > cap:
                        raise ImageTooLarge(f"{full}: {st.st_size} bytes, more than the image cap of {cap} bytes")
                    with open(full, "rb") as f:
                        add(rel, st.st_mode, f.read(), int(st.st_mtime))
    for name, data in (extra or {}).items():
        add(name.lstrip("/"), stat.S_IFREG | 0o755, data, 0)
    out.extend(_entry(TRAILER, 0, 0, 0, 0))
    return bytes(out)


def iter_newc(image: bytes) -> Iterator[tuple[str, int, bytes]]:
    """(name, mode, data) of each entry up to the trailer; ValueError if malformed."""
    pos = 0
    while pos + 110 <= len(image):
        if image[pos:pos + 6] != b"070701":
            raise ValueError(f"bad cpio magic at {pos}")
        f = [int(image[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_end = pos + 110 + namesize
        name = image[pos + 110:name_end - 1].decode("utf-8", "surrogateescape")
        data_at = name_end + (-name_end % 4)
        data = image[data_at:data_at + size]
        if len(data) != size:
            raise ValueError("truncated cpio image")
        if name == TRAILER:
            return
        yield name, mode, data
        pos = data_at + size + (-size % 4)


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


def unpack_tree(image: bytes, dest: str | os.PathLike[str]) -> int:
    """Write the entries of ``image`` under ``dest``; returns how many.  Names
    that would leave ``dest`` (absolute, ``..``) are refused."""
    base = Path(dest).resolve()
    base.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, mode, data in iter_newc(image):
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            raise ValueError(f"refusing cpio entry {name!r}")
        target = base.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        # a symlink written earlier must not carry a later entry outside dest
        if not target.parent.resolve().is_relative_to(base):
            raise ValueError(f"refusing cpio entry {name!r}: it leaves the export directory")
        if stat.S_ISDIR(mode):
            if target.is_symlink() or target.exists() and not target.is_dir():
                target.unlink()
            target.mkdir(exist_ok=True)
        elif stat.S_ISLNK(mode):
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(os.fsdecode(data), target)
        elif stat.S_ISREG(mode):
            if target.is_symlink():
                target.unlink()
            target.write_bytes(data)
            os.chmod(target, stat.S_IMODE(mode) or 0o644)
        else:
            continue
        n += 1
    return n
