"""``python -m tightfit``: the same entry point as the ``tightfit`` command."""

import sys

from tightfit.cli.main import main

sys.exit(main())
