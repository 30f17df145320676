"""Generates the gRPC stubs from volmig's protos while the package is built.

The protos are read from VOLMIG_PROTO_DIR, else ../../proto (the repository's
proto/ next to clients/python). Output goes to the build directory, so the
source tree stays clean: volmig/v1/{migration,node,controller,identity}_pb2.py
with .pyi stubs, and *_pb2_grpc.py.
"""

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTOS = ("migration", "node", "controller", "identity")


def proto_dir() -> Path:
    root = Path(os.environ.get("VOLMIG_PROTO_DIR", HERE.parent.parent / "proto"))
    if not (root / "volmig" / "v1" / "node.proto").is_file():
        raise SystemExit(
            f"volmig: no protos under {root} (set VOLMIG_PROTO_DIR to the repository's proto/)"
        )
    return root


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        from grpc_tools import protoc  # a build requirement (pyproject.toml)

        root = proto_dir()
        out = Path(self.build_lib)
        (out / "volmig" / "v1").mkdir(parents=True, exist_ok=True)
        files = [str(root / "volmig" / "v1" / f"{p}.proto") for p in PROTOS]
        include = str(Path(protoc.__file__).parent / "_proto")
        args = [
            "protoc",
            f"-I{root}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("volmig: protoc failed on " + " ".join(files))
        # grpcio-tools writes no stubs for the service modules; the package's own
        # API does not use them, and callers who do get them typed as Any.
        for p in PROTOS:
            (out / "volmig" / "v1" / f"{p}_pb2_grpc.pyi").write_text(
                "from typing import Any\n\ndef __getattr__(name: str) -> Any: ...\n"
            )


setup(cmdclass={"build_py": BuildWithStubs})
