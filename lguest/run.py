"""``lguest.run``, kept as a public path: the run loop lives in :mod:`lguest.host.run`."""

from .host.run import (  # noqa: F401 - re-exported
    SIGNAL_SLICE_S,
    Backend,
    GuestKilled,
    RunContext,
    RunExit,
    ScriptedBackend,
    run_guest,
)
