"""Generated protobuf and gRPC modules of the volmig.v1 API (made at build time)."""
