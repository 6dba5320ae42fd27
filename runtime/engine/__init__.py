"""The inference engine: a scheduler that owns the loaded models, a worker thread per model, a
generation step per reply, and streams of events back to the caller."""

from tandem.runtime.engine.params import LoadParams, SamplingParams
from tandem.runtime.engine.scheduler import Lease, Scheduler
from tandem.runtime.engine.stream import Failed, Finished, Progress, Queued, ReplyStats, ReplyStream, Started, Token
from tandem.runtime.engine.worker import ModelWorker

__all__ = [
    "Failed",
    "Finished",
    "Lease",
    "LoadParams",
    "ModelWorker",
    "Progress",
    "Queued",
    "ReplyStats",
    "ReplyStream",
    "SamplingParams",
    "Scheduler",
    "Started",
    "Token",
]
