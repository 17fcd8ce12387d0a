"""The doors: each parses requests into ``TaskSpec``s and renders the shared event stream.

One package per door -- ``http`` (JSON, SSE, WebSocket, ``POST /run``, the
playground and ``/docs``), ``grpc`` (go_sandbox.v1 and sandlot.v1), ``judge0``,
``piston`` and ``mcp`` -- and ``common`` for what every door shares (auth).
``server`` runs the HTTP and gRPC listeners in one process.

A door never runs a process or touches a box's cgroup; it talks to the
``Service`` it is given (broker, pool, languages, metrics).
"""
