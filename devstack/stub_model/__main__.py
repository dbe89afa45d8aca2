"""``python -m devstack.stub_model``: serve until SIGINT/SIGTERM."""

import sys

from devstack.stub_model.server import main

sys.exit(main())
