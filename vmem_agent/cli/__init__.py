"""The `vmem-agent` command line: a thin click shell over the engine."""

from .commands import main

__all__ = ["main"]
