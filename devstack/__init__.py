"""The local stack: processes, emulators and stubs that stand in for Google Cloud and OpenAI."""

import os

# The harnesses (make run, the tests, the bench) use gRPC clients and start processes. A child
# between fork and exec can run gRPC's fork handlers: the bench saw one log gRPC's poller
# error and abort (a service that "exited with -6" before its program ran). No child here
# uses gRPC before exec, so its fork support is off.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
