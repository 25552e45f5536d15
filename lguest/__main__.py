"""``python -m lguest``: the same as the ``lguest`` command."""

import sys

from .cli import main

sys.exit(main())
