"""The grpc.aio variant against a real node's unix socket."""

import asyncio

import grpc
import pytest

import volmig
import volmig.aio
from conftest import event_summary


async def migrate(env):
    async with volmig.aio.connect(env("VOLMIG_NODE")) as client:
        assert await client.service() == "node"
        with pytest.raises(volmig.NotFound) as e:
            await client.migrate("no-such-guest", "vda", to_pool=env("VOLMIG_POOL_3"))
        assert e.value.code is grpc.StatusCode.NOT_FOUND
        handle = await client.migrate(env("VOLMIG_DOMAIN"), ["vda"], to_pool=env("VOLMIG_POOL_3"), verify="strict")
        events = [event_summary(handle.reattachments, e) async for e in handle]
        outcome = await handle.wait(timeout=120)
        listed = await client.list(domain=env("VOLMIG_DOMAIN"))
        assert handle.migration_id in [r.migration_id for r in listed]
        return handle.migration_id, events, outcome.result


def test_async_migration_completes_with_typed_events(env, report):
    migration_id, events, result = asyncio.run(migrate(env))
    assert events[0]["phase"] == "ACCEPTED" and events[-1]["phase"] == "COMPLETED"
    assert result.destination_pool == env("VOLMIG_POOL_3")
    report(
        "async",
        {
            "migration_id": migration_id,
            "events": events,
            "destination_source": result.destination_source,
            "destination_pool": result.destination_pool,
        },
    )
