"""Against a real controller over mutual TLS with bearer tokens; the first endpoint
given is dead, so every call fails over to the second."""

import grpc
import pytest

import volmig


def connect(env, token_file):
    return volmig.connect(
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
