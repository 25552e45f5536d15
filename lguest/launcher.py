"""``lguest.launcher``, kept as a public path: the Launcher lives in :mod:`lguest.host.launcher`."""

from .host.launcher import (  # noqa: F401 - re-exported
    DEFAULT_CONSOLE_LIMIT,
    NOTIFY_MAX,
    ConsoleSink,
    Launcher,
    RunResult,
)
