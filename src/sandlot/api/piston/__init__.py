"""The Piston-compatible door: ``/api/v2/runtimes`` and ``/api/v2/execute`` with semver ranges."""
