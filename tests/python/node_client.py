"""A Python grpcio client of a volmig node that knows nothing of volmig's
protos: it discovers the API by server reflection (grpcio-reflection asks
grpc.reflection.v1alpha), builds the messages from the descriptors, and calls
GetInfo and ListPools. Prints one JSON object with what it found.

    node_client.py --unix /run/volmig/node.sock
    node_client.py --tls localhost:7451 --ca ca.pem --cert c.pem --key k.pem

Over a unix socket, grpc-core would send the socket path as the HTTP/2
:authority, which the Rust server refuses; grpc.default_authority fixes it.
"""

import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def channel(args):
    if args.unix:
        return grpc.insecure_channel(
            "unix://" + args.unix, options=[("grpc.default_authority", "localhost")]
        )
    with open(args.ca, "rb") as f:
        ca = f.read()
    with open(args.cert, "rb") as f:
        cert = f.read()
    with open(args.key, "rb") as f:
        key = f.read()
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.secure_channel(args.tls, creds)


def call(chan, pool, service, method_name):
    method = pool.FindServiceByName(service).FindMethodByName(method_name)
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    stub = chan.unary_unary(
        "/%s/%s" % (service, method_name),
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    return json_format.MessageToDict(stub(request_class(), timeout=20))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--unix")
    parser.add_argument("--tls")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    chan = channel(args)
    db = ProtoReflectionDescriptorDatabase(chan)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    node = pool.FindServiceByName("volmig.v1.Node")
    info = call(chan, pool, "volmig.v1.Node", "GetInfo")
    pools = call(chan, pool, "volmig.v1.Node", "ListPools")
    json.dump(
        {
            "services": services,
            "node_methods": [m.name for m in node.methods],
            "info": info,
            "pool_count": len(pools.get("pools", [])),
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
