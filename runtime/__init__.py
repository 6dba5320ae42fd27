"""Tandem runtime: hardware, model files and the inference engine.

Knows nothing of HTTP or SQLite: it takes paths and parameters and yields tokens and
measurements.
"""
