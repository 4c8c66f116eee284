"""Myelin's serving runtime: spec, server, batching and the `myelin` CLI."""

__version__ = "0.1.0"
