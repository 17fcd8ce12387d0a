"""Environments: the read-only root a box runs in, other than the host's (issue 15).

``store.EnvironmentStore`` keeps them; ``oci`` reads an image the user brings, ``unpack`` applies its
layers safely, ``spec`` and ``build`` make one from a declared TOML spec. Nothing here runs a box.
"""
