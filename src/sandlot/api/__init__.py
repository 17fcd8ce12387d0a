"""The doors: each parses requests into ``TaskSpec``s and renders the shared event stream.

One package per door -- ``http`` (JSON, SSE, WebSocket, ``POST /run``, the
playground and ``/docs``), ``grpc`` (go_sandbox.v1 and sandlot.v1), ``judge0``,
``piston`` and ``mcp`` -- and ``common`` for what every door shares (submit and
follow, auth, parsing, rendering). ``server`` runs the HTTP and gRPC listeners
in one process.

A door never runs a process or touches a box or its cgroup; it calls
``common`` and the ``Service`` it is given (``tests/test_api_layout.py``).
"""
