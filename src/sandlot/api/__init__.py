"""The doors: each parses requests into ``TaskSpec``s and renders the shared event stream.

A door never runs a process or touches a box's cgroup; it talks to the
``Service`` it is given (broker, pool, languages, metrics). ``auth`` is shared
by every network door; ``http`` builds the FastAPI application.
"""
