"""Settings from tests/python_package.rs (environment), and a place for answers:
each test writes what the Rust side checks against libvirt to $VOLMIG_OUT/NAME.json."""

import json
import os
from pathlib import Path

import pytest


@pytest.fixture
def env():
    def get(name):
        value = os.environ.get(name)
        if not value:
            pytest.fail(f"{name} is not set (run by tests/python_package.rs)")
        return value

    return get


@pytest.fixture
def report():
    def write(name, answer):
        Path(os.environ["VOLMIG_OUT"], f"{name}.json").write_text(json.dumps(answer))

    return write


def event_summary(handle_reattachments, event):
    p = event.progress
    return {
        "phase": event.phase.name,
        "bytes_done": p.bytes_done if p else None,
        "bytes_total": p.bytes_total if p else None,
        "reattachments": handle_reattachments,
        "migration_id": event.migration_id,
    }
