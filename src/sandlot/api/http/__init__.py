"""The HTTP door: the JSON API, SSE and WebSocket streams, ``POST /run``, the playground and ``/docs``.

``app`` builds the FastAPI application and mounts the other doors that speak
HTTP (Judge0, Piston, MCP); each route module owns one group of routes.
"""
