"""The inference engine: one worker thread per loaded model, streams of tokens back."""

from runtime.engine.params import LoadParams, SamplingParams
from runtime.engine.session import EngineSession
from runtime.engine.stream import Failed, Finished, ReplyStats, ReplyStream, Started, Token

__all__ = [
    "EngineSession",
    "Failed",
    "Finished",
    "LoadParams",
    "ReplyStats",
    "ReplyStream",
    "SamplingParams",
    "Started",
    "Token",
]
