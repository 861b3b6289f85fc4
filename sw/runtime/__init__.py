"""The host runtime: clusters of devices on the functional model or the RTL, the paged KV
cache, the scheduler and ``generate()`` (docs/runtime.md)."""
