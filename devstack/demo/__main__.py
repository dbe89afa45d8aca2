"""``python -m devstack.demo``: serve the demo page until SIGINT/SIGTERM."""

import sys

from devstack.demo.server import main

sys.exit(main())
