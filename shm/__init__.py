"""Shared-memory snapshot rings (ticker, orderbook) with seqlocked, lock-free readers."""
