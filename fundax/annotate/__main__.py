"""``python -m fundax.annotate``: see :mod:`fundax.annotate.cli`."""

import sys

from fundax.annotate.cli import main

sys.exit(main())
