"""``python -m refloss.audit``: the same as ``refloss audit``."""

import sys

from . import main

sys.exit(main())
