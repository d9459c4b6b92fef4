"""``python -m fednode`` is the ``fednode`` command."""

import sys

from fednode.cli import main

sys.exit(main())
