"""The inference engine: a scheduler that owns the loaded models, a worker thread per model, a
generation step per reply, and streams of events back to the caller."""

from runtime.engine.params import LoadParams, SamplingParams
from runtime.engine.scheduler import Lease, Scheduler
from runtime.engine.stream import Failed, Finished, Queued, ReplyStats, ReplyStream, Started, Token
from runtime.engine.worker import ModelWorker

__all__ = [
    "Failed",
    "Finished",
    "Lease",
    "LoadParams",
    "ModelWorker",
    "Queued",
    "ReplyStats",
    "ReplyStream",
    "SamplingParams",
    "Scheduler",
    "Started",
    "Token",
]
