"""A local Google Cloud Pub/Sub emulator: the v1 gRPC API, push with OIDC, retries, dead letters.

Run it with `python -m devstack.pubsub_emulator`, or in-process:

    with Emulator(EmulatorConfig(port=0, http_port=0, topology=...)) as emulator:
        os.environ["PUBSUB_EMULATOR_HOST"] = emulator.emulator_host
"""

from devstack.pubsub_emulator.emulator import Emulator, EmulatorConfig
from devstack.pubsub_emulator.faults import FaultConfig
from devstack.pubsub_emulator.topology import Topology

__all__ = ["Emulator", "EmulatorConfig", "FaultConfig", "Topology"]
