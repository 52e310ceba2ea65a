"""The benchmark wing: the timing harness, workloads and peak-memory measurement."""
