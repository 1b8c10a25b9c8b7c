"""``python -m clipcite`` (and ``torchrun ... -m clipcite``): the ``clipcite`` command."""

import sys

from clipcite.cli import main

sys.exit(main())
