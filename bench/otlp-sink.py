"""A minimal OTLP/gRPC trace receiver for bench/observability-bench.sh.

Accepts TraceService/Export calls without decoding them (the request bytes
are counted, the answer is an empty ExportTraceServiceResponse, which encodes
to zero bytes), so the node's exporter does all the work a real collector
would make it do. Usage: python otlp-sink.py HOST:PORT COUNT_FILE; on SIGTERM
it writes "<requests> <bytes>" to COUNT_FILE.
"""

import signal
import sys
import threading
from concurrent import futures

import grpc

addr, count_file = sys.argv[1], sys.argv[2]
lock = threading.Lock()
received = {"requests": 0, "bytes": 0}


def export(request: bytes, context) -> bytes:
    with lock:
        received["requests"] += 1
        received["bytes"] += len(request)
    return b""


handler = grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(export)},
)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((handler,))
if server.add_insecure_port(addr) == 0:
    sys.exit(f"cannot listen on {addr}")
server.start()
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
done.wait()
server.stop(0)
with open(count_file, "w") as f:
    f.write(f"{received['requests']} {received['bytes']}\n")
