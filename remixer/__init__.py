"""remixer: telemetry and policy for Envoy-based service meshes.

This package is the thin shared wiring: settings, the CLI, server assembly and the small
contracts (`remixer.kit.parts`) through which the three cards (policy/, telemetry/, controller/)
plug into one process. The cards never import the composition root (cli, serve, demo, settings).
"""

__version__ = "0.1.0"
