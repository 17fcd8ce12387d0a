"""What every door shares, so that a new field or flow lands once, not once per door.

- ``core``: submit a TaskSpec within the caller's quota, follow its events, wait for its exit, cancel.
- ``auth``: API keys, tenants, per-key quotas, the bearer-token parse.
- ``parsing``: JSON bodies (no NaN, no lone surrogates), for the JSON doors.
- ``render``: output bytes as text, a task's result as a dict.
- ``asgi``: what the doors served by the one ASGI app (HTTP, Judge0, Piston, MCP) share.

A door imports these and the service layer only (``tests/test_api_layout.py``).
"""
