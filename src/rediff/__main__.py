"""``python -m rediff`` is the ``rediff`` command."""

import sys

from rediff.cli import main

sys.exit(main())
