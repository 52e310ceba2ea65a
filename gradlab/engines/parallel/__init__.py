"""Data-parallel engines: spread a problem's rows over torch.distributed ranks or JAX devices."""
