"""Worker processes that read the shared-memory rings and subscribe to the ZeroMQ bus."""
