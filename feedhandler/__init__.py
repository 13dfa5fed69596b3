"""upfeed feed process: Upbit connections, shared-memory rings and a ZeroMQ event bus."""

__version__ = "0.1.0"
