"""``python -m cbir_dist.cli``: the same as the ``cbir-dist`` command."""

import sys

from . import main

sys.exit(main())
