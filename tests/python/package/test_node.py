"""Against a real node over its unix socket (tests/python_package.rs starts it, the
guest and a proxy in front of the socket that it cuts mid-copy)."""

import grpc
import pytest

import volmig
from conftest import event_summary


def test_migrate_reattaches_after_the_connection_drops_mid_copy(env, report):
    # Through the proxy: the Rust test closes every connection once the copy is under way.
    with volmig.connect(env("VOLMIG_NODE_PROXY")) as client:
        assert client.service == "node"
        disks = client.disks(env("VOLMIG_DOMAIN"))
        assert disks.running and disks.disks[0].target == "vda"
        assert any(p.name == env("VOLMIG_POOL_1") for p in client.pools())
        handle = client.migrate(
            env("VOLMIG_DOMAIN"),
            "vda",
            to_pool=env("VOLMIG_POOL_1"),
            bandwidth=env("VOLMIG_BANDWIDTH"),
            request_id="py-drop-1",
        )
        assert handle.migration_id and handle.request_id == "py-drop-1"
        events = []
        for event in handle:
            assert isinstance(event, volmig.Event) and isinstance(event.phase, volmig.Phase)
            if event.progress is not None:
                assert isinstance(event.progress, volmig.Progress)
            events.append(event_summary(handle.reattachments, event))
        outcome = handle.wait(timeout=120)
        assert isinstance(outcome.result, volmig.Result)
        assert outcome.result.destination_pool == env("VOLMIG_POOL_1")
        assert handle.reattachments >= 1, "the connection was cut, so the handle re-attached"
        status = client.status(handle.migration_id)
        assert status.latest is not None and status.latest.phase is volmig.Phase.COMPLETED
        report(
            "drop",
            {
                "migration_id": handle.migration_id,
                "reattachments": handle.reattachments,
                "events": events,
                "destination_source": outcome.result.destination_source,
                "destination_pool": outcome.result.destination_pool,
                "destination_volume": outcome.result.destination_volume,
                "source_pool": outcome.result.source_pool,
            },
        )


def test_refused_requests_raise_typed_errors_with_their_code(env, report):
    codes = {}
    with volmig.connect(env("VOLMIG_NODE")) as client:
        with pytest.raises(volmig.NotFound) as e:
            client.migrate("no-such-guest-" + env("VOLMIG_DOMAIN"), "vda", to_pool=env("VOLMIG_POOL_1"))
        assert e.value.code is grpc.StatusCode.NOT_FOUND and e.value.message
        codes["unknown_domain"] = e.value.code.name
        # The disk is already on POOL_1: the same pool is refused.
        with pytest.raises(volmig.FailedPrecondition) as e:
            client.migrate(env("VOLMIG_DOMAIN"), "vda", to_pool=env("VOLMIG_POOL_1"))
        codes["same_pool"] = e.value.code.name
        with pytest.raises(volmig.InvalidArgument) as e:
            client.migrate(env("VOLMIG_DOMAIN"), "vda", to_pool="../etc")
        codes["bad_pool_name"] = e.value.code.name
        with pytest.raises(volmig.NotFound):
            client.watch("0" * 32)
        with pytest.raises(volmig.RequestRefused) as e:
            client.status("no such id!")
        codes["bad_id"] = e.value.code.name
        with pytest.raises(volmig.ControllerRequired) as e:
            client.plan(env("VOLMIG_DOMAIN"), "vda")
        assert e.value.code is grpc.StatusCode.UNIMPLEMENTED
        # Asked of the real node (its Identity says "node"): refused before anything is sent.
        with pytest.raises(volmig.ControllerRequired, match="set_pool_maintenance.*needs a controller") as e:
            client.set_pool_maintenance(env("VOLMIG_POOL_1"), True, reason="x")
        codes["maintenance_on_node"] = e.value.code.name
    report("refusals", codes)
