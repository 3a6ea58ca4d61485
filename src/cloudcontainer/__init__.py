"""cloudcontainer: real Linux containers behind a WebContainer-compatible API."""

__version__ = "0.1.0"
