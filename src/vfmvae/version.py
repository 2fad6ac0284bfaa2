"""The package version, in a module of its own so that the code that records it (model folders) need not import
the package root."""

__version__ = "0.1.0.dev0"
