"""Writing a JSON file atomically, for the timeline and the recordings.

The file is written to a temporary name beside ``path`` and renamed over
it, so a reader (or a run that ends by a signal half-way) never sees a
partial file: the old one or the whole new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, prefix: str = ".lguest-",
                      compact: bool = False) -> None:
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":") if compact else None)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
