"""Readers and writers, one module per format; found through :mod:`ckpt_migrate.converters.registry`."""
