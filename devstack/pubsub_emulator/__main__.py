"""Entry point for `python -m devstack.pubsub_emulator`."""

from devstack.pubsub_emulator.cli import main

raise SystemExit(main())
