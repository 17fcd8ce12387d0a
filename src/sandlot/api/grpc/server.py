"""The gRPC doors, wired onto one grpc.aio server.

Two services share the server: ``go_sandbox.v1.GoSandboxService``, wire-compatible
with the go-sandbox service it replaces (grpc_go_sandbox), and sandlot's own
``sandlot.v1.Sandlot`` (grpc_sandlot). Beside them: server reflection, so
grpcurl and friends need no .proto files, and the standard health service
(SERVING for "" and each service name). Authentication, error statuses and the
request metric are shared by both doors (``door``). The generated code
lives in ``sandlot.api.grpc.gen`` (scripts/gen_proto.sh).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from sandlot.api.common.auth import Authenticator
from sandlot.api.grpc.door import Door
from sandlot.api.grpc.gen.go_sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2, sandlot_pb2_grpc
from sandlot.api.grpc.go_sandbox_v1 import GoSandboxServicer
from sandlot.api.grpc.sandlot_v1 import SandlotServicer
from sandlot.service import Service

GO_SANDBOX_SERVICE = sandbox_pb2.DESCRIPTOR.services_by_name["GoSandboxService"].full_name
SANDLOT_SERVICE = sandlot_pb2.DESCRIPTOR.services_by_name["Sandlot"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def create_grpc_server(
    service: Service, address: str, *, authenticator: Authenticator | None = None
) -> grpc.aio.Server:
    """A server bound to address ("host:port"), not yet started: ``await server.start()``.

    Pass the HTTP door's ``authenticator`` to share its per-key quotas; by default
    the gRPC doors keep their own (same keys, separate counters).
    """
    server = grpc.aio.server()
    door = Door(service, authenticator)
    sandbox_pb2_grpc.add_GoSandboxServiceServicer_to_server(GoSandboxServicer(door), server)
    sandlot_pb2_grpc.add_SandlotServicer_to_server(SandlotServicer(door), server)
    health_pb2_grpc.add_HealthServicer_to_server(_health((GO_SANDBOX_SERVICE, SANDLOT_SERVICE)), server)
    reflection.enable_server_reflection(
        (GO_SANDBOX_SERVICE, SANDLOT_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC: cannot listen on {address}")
    return server


def _health(services: tuple[str, ...]) -> health_aio.HealthServicer:
    health = health_aio.HealthServicer()
    # The servicer's public setter is a coroutine and this factory is not; before the
    # server starts nobody watches, so seeding the status table is all set() would do.
    for name in services:
        health._server_status[name] = health_pb2.HealthCheckResponse.SERVING
    return health
