"""Which RPC the handle re-sends after a drop, against an in-process fake node:
MigrateVolume only with the same request_id (no event seen yet), WatchMigration
once the migration id is known; never a new request."""

from concurrent import futures

import grpc
import pytest

import volmig
from volmig.v1 import identity_pb2, migration_pb2


class FakeNode:
    """MigrateVolume: the first call fails UNAVAILABLE before any event; the next sends
    ACCEPTED and then drops. WatchMigration: COPYING, COMPLETED."""

    def __init__(self):
        self.calls = []

    def capabilities(self, request, context):
        return identity_pb2.GetPluginCapabilitiesResponse(
            capabilities=[identity_pb2.PLUGIN_CAPABILITY_NODE_SERVICE]
        )

    def migrate(self, request, context):
        self.calls.append(("MigrateVolume", request.request_id))
        if len(self.calls) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        yield migration_pb2.MigrationEvent(migration_id="m-1", phase=migration_pb2.PHASE_ACCEPTED)
        context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")

    def watch(self, request, context):
        self.calls.append(("WatchMigration", request.migration_id))
        yield migration_pb2.MigrationEvent(migration_id="m-1", phase=migration_pb2.PHASE_COPYING)
        yield migration_pb2.MigrationEvent(
            migration_id="m-1",
            phase=migration_pb2.PHASE_COMPLETED,
            disk="vda",
            result=migration_pb2.MigrationResult(destination_pool="fast", destination_source="/p/v"),
        )


@pytest.fixture
def fake(tmp_path):
    node = FakeNode()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

    def stream(fn, req):
        return grpc.unary_stream_rpc_method_handler(
            fn, req.FromString, migration_pb2.MigrationEvent.SerializeToString
        )

    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "volmig.v1.Node",
                {
                    "MigrateVolume": stream(node.migrate, migration_pb2.MigrateVolumeRequest),
                    "WatchMigration": stream(node.watch, migration_pb2.WatchMigrationRequest),
                },
            ),
            grpc.method_handlers_generic_handler(
                "volmig.v1.Identity",
                {
                    "GetPluginCapabilities": grpc.unary_unary_rpc_method_handler(
                        node.capabilities,
                        identity_pb2.GetPluginCapabilitiesRequest.FromString,
                        identity_pb2.GetPluginCapabilitiesResponse.SerializeToString,
                    )
                },
            ),
        ]
    )
    socket = tmp_path / "fake.sock"
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    yield node, f"unix://{socket}"
    server.stop(None)


def test_a_dropped_stream_resends_the_same_request_id_then_watches(fake):
    node, endpoint = fake
    with volmig.connect(endpoint) as client:
        handle = client.migrate("g", "vda", to_pool="fast", request_id="op-1")
        phases = [e.phase for e in handle]
        outcome = handle.wait(timeout=10)
    assert node.calls == [
        ("MigrateVolume", "op-1"),
        ("MigrateVolume", "op-1"),
        ("WatchMigration", "m-1"),
    ]
    assert phases == [volmig.Phase.ACCEPTED, volmig.Phase.COPYING, volmig.Phase.COMPLETED]
    assert outcome.result.destination_pool == "fast" and handle.reattachments == 2
