"""The package version (one place, read by the package, provenance and the service)."""

__version__ = "0.1.0"
