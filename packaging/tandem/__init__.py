"""Tandem: a local AI assistant that runs models on this machine.

The code lives in tandem.app (people-facing: server, CLI, storage) and tandem.runtime (hardware,
planner, engine); tandem.ui holds the static page and tandem.assets the catalog and icons.
"""
