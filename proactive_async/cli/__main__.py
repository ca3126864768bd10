"""``python -m proactive_async.cli``: the same ``main`` as the ``proactive-async`` script."""

import sys

from . import main

sys.exit(main())
