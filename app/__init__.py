"""Tandem: a local AI assistant that runs models on this machine."""

__version__ = "0.1.0"
