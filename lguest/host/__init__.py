"""The control plane: what lguest's host does around the core's seed functions.

* :mod:`.vectors` -- the ``syscall_vector`` module parameter, the host's
  used-vector table, :class:`~lguest.host.vectors.Host` (which builds guests);
* :mod:`.hypercalls` -- the hypercall table, LGUEST_INIT, the async ring;
* :mod:`.traps` -- ``handle_trap``: what the host does with each trap;
* :mod:`.run` -- the run loop, the :class:`~lguest.host.run.Backend`
  protocol an emulator implements, and the :class:`~lguest.host.run.RunContext`
  every handler is given;
* :mod:`.launcher` -- the generic Launcher (NOTIFY, early console, irqs);
* :mod:`.stats`, :mod:`.snapshot` -- counters and trace; save/restore.

Imports point down only: this package uses the core layer (``lguest.cores``,
``lguest.constants``, ...), never ``lguest.unicorn`` or ``lguest.cli``.
"""
