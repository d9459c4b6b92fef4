"""``python -m fednode`` is the ``fednode`` command."""

import sys

from fednode.node.cli import main

sys.exit(main())
