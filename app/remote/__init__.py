"""Other servers as models: any OpenAI-compatible server (another Tandem, llama-server, vLLM,
Ollama, LM Studio) registered by name; its models are named NAME/model and served through the
scheduler like local ones, streamed, with the same per-reply stats measured on arrival."""

from tandem.app.remote.service import RemoteService
from tandem.app.remote.worker import RemoteServed, RemoteWorker

__all__ = ["RemoteServed", "RemoteService", "RemoteWorker"]
