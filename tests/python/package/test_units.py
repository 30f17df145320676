"""The package without a server: bandwidth strings, endpoints, credentials, requests."""

import grpc
import pytest

import volmig
from volmig._channel import Credentials, open_channel, parse_endpoint
from volmig._request import migrate_request


def test_bandwidth_units_are_binary_or_decimal():
    assert volmig.parse_bandwidth("200MiB") == 200 * 2**20
    assert volmig.parse_bandwidth("200MB") == 200 * 10**6
    assert volmig.parse_bandwidth("1.5GiB/s") == int(1.5 * 2**30)
    assert volmig.parse_bandwidth("64KiB") == 65536
    assert volmig.parse_bandwidth(1000) == 1000
    assert volmig.parse_bandwidth("0") == 0
    for bad in ("fast", "10 parsecs", "-1MB", ""):
        with pytest.raises(ValueError):
            volmig.parse_bandwidth(bad)


def test_endpoints():
    unix = parse_endpoint("unix:///run/volmig/node.sock")
    assert unix.unix and unix.target == "unix:///run/volmig/node.sock" and unix.loopback
    tls = parse_endpoint("https://ctl1.example:7450")
    assert tls.tls and tls.target == "ctl1.example:7450" and not tls.loopback
    assert parse_endpoint("ctl1:7450").tls
    assert not parse_endpoint("http://127.0.0.1:7450").tls
    with pytest.raises(ValueError):
        parse_endpoint("ftp://x:1")


def test_a_token_is_not_sent_in_plaintext_off_loopback():
    creds = Credentials(token="s" * 40)
    with pytest.raises(ValueError, match="plaintext"):
        open_channel(parse_endpoint("http://10.1.2.3:7450"), creds)
    open_channel(parse_endpoint("http://127.0.0.1:7450"), creds).close()
    assert "s" * 40 not in repr(creds)
    assert creds.metadata() == (("authorization", "Bearer " + "s" * 40),)


def test_migrate_requests():
    req = migrate_request("g", "vda", to_pool="p", bandwidth="1MiB", source_policy="delete", request_id="r1")
    assert (req.domain, req.disk, req.destination_pool, req.request_id) == ("g", "vda", "p", "r1")
    assert req.options.bandwidth_bytes_per_sec == 2**20
    assert req.options.source_policy == 2
    assert migrate_request("g", "vda").request_id, "a request id is always sent"
    multi = migrate_request("g", {"vda": "a", "vdb": "b"})
    assert [(d.disk, d.destination_pool) for d in multi.disks] == [("vda", "a"), ("vdb", "b")]
    assert migrate_request("g", all_disks=True, to_tags=["ssd"]).required_tags == ["ssd"]
    with pytest.raises(ValueError):
        migrate_request("g")
    with pytest.raises(ValueError, match="copy_mode"):
        migrate_request("g", "vda", copy_mode="warp")
    with pytest.raises(TypeError):
        migrate_request("g", "vda", colour="blue")


def test_errors_carry_the_code():
    from volmig.errors import refused

    e = refused(grpc.StatusCode.NOT_FOUND, "no domain x")
    assert isinstance(e, volmig.NotFound) and isinstance(e, volmig.RequestRefused)
    assert e.code is grpc.StatusCode.NOT_FOUND and e.message == "no domain x"


def test_controller_calls_on_a_node_raise_controller_required():
    import asyncio

    client = volmig.connect("unix:///nonexistent/node.sock", service="node")
    with pytest.raises(volmig.ControllerRequired, match="needs a controller") as e:
        client.set_pool_maintenance("fast", True)
    assert e.value.code is grpc.StatusCode.UNIMPLEMENTED and "node" in e.value.message
    with pytest.raises(volmig.ControllerRequired):
        client.plan("g", "vda")

    async def aio():
        async with volmig.aio.connect("unix:///nonexistent/node.sock", service="node") as a:
            await a.set_pool_maintenance("fast", False)

    with pytest.raises(volmig.ControllerRequired, match="set_pool_maintenance"):
        asyncio.run(aio())
