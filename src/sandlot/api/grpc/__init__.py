"""The gRPC door: the go_sandbox.v1-compatible service and the native sandlot.v1 service.

``gen`` is generated from ``proto/`` by ``scripts/gen_proto.sh`` (committed).
"""
