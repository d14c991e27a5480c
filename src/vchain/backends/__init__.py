"""Backends, one module per vendor: `vchain.backends.openai`, `vchain.backends.wan`."""
