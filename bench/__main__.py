"""`python -m bench [--size tiny|full] [--out PATH]`."""

import sys

from bench.run import main

sys.exit(main())
