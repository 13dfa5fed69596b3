"""An Upbit-compatible exchange simulator: default upstream of the demo, tests and benchmarks."""
