"""The model manager: the Hugging Face hub (search, judge before download, download), imports
of models already on disk, and the installed models' files."""

from tandem.app.hub.service import HubService, installed_models, model_files, models_dir

__all__ = ["HubService", "installed_models", "model_files", "models_dir"]
