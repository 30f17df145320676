"""Against a real controller over mutual TLS with bearer tokens; the first endpoint
given is dead, so every call fails over to the second."""

import asyncio

import grpc
import pytest

import volmig


def connect(env, token_file, connect=volmig.connect):
    return connect(
        [env("VOLMIG_DEAD_ENDPOINT"), env("VOLMIG_CONTROLLER")],
        ca=env("VOLMIG_CA"),
        cert=env("VOLMIG_CERT"),
        key=env("VOLMIG_KEY"),
        token_file=token_file,
    )


def test_controller_plans_lists_pools_and_refuses_a_viewer(env, report):
    with connect(env, env("VOLMIG_TOKEN_FILE")) as client:
        assert client.service == "controller"
        assert client.endpoint == env("VOLMIG_CONTROLLER"), "failed over from the dead endpoint"
        plan = client.plan(env("VOLMIG_DOMAIN"), "vda", to_tags=[env("VOLMIG_TAG")])
        assert plan.chosen_pool == env("VOLMIG_POOL_2"), plan
        tagged = [p for p in client.pools() if env("VOLMIG_TAG") in p.tags]
        assert [p.name for p in tagged] == [env("VOLMIG_POOL_2")]
        assert tagged[0].node_ids
    with connect(env, env("VOLMIG_VIEWER_TOKEN_FILE")) as viewer:
        assert viewer.list() is not None
        with pytest.raises(volmig.PermissionDenied) as e:
            viewer.migrate(env("VOLMIG_DOMAIN"), "vda", to_tags=[env("VOLMIG_TAG")])
        assert e.value.code is grpc.StatusCode.PERMISSION_DENIED
    report("controller", {"chosen_pool": plan.chosen_pool, "viewer": e.value.code.name})


def test_pool_maintenance_takes_a_pool_out_of_placement_and_needs_an_operator(env, report):
    pool = env("VOLMIG_POOL_2")
    answer = {}
    with connect(env, env("VOLMIG_TOKEN_FILE")) as client:
        try:
            set_on = client.set_pool_maintenance(pool, True, reason="replacing disks")
            assert isinstance(set_on, volmig.MaintenanceResult), set_on
            assert set_on.pool == pool and set_on.storage_id, set_on
            on = set_on.maintenance
            assert isinstance(on, volmig.PoolMaintenance)
            assert on.on and on.reason == "replacing disks" and "py-operator" in on.actor, on
            assert on.since.tzinfo is not None and on.since_unix_ms > 0, on
            listed = {p.name: p for p in client.pools()}[pool]
            assert listed.in_maintenance and listed.maintenance == on, listed
            assert listed.storage_id == set_on.storage_id
            with pytest.raises(volmig.FailedPrecondition) as refused:
                client.migrate(env("VOLMIG_DOMAIN"), "vda", to_pool=pool)
            assert "maintenance" in refused.value.message, refused.value.message
            answer["named_pool"] = refused.value.code.name
            answer["named_pool_message"] = refused.value.message
        finally:
            # Off through the asyncio client (the later steps place on this pool).
            async def off():
                async with connect(env, env("VOLMIG_TOKEN_FILE"), volmig.aio.connect) as aclient:
                    return await aclient.set_pool_maintenance(pool, False)

            set_off = asyncio.run(off())
        assert not set_off.maintenance.on and set_off.maintenance.reason == "", set_off
        listed = {p.name: p for p in client.pools()}[pool]
        assert not listed.in_maintenance and listed.maintenance == set_off.maintenance, listed
        answer["listed"] = {
            "on": listed.maintenance.on,
            "actor": listed.maintenance.actor,
            "since_unix_ms": listed.maintenance.since_unix_ms,
        }
    with connect(env, env("VOLMIG_VIEWER_TOKEN_FILE")) as viewer:
        with pytest.raises(volmig.PermissionDenied) as denied:
            viewer.set_pool_maintenance(pool, True, reason="not mine to set")
        assert denied.value.code is grpc.StatusCode.PERMISSION_DENIED
        still = {p.name: p for p in viewer.pools()}[pool]
        assert still.maintenance is not None and not still.maintenance.on, still
        answer["viewer"] = denied.value.code.name
    report("maintenance", answer)
