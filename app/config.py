"""Settings, read from TANDEM_* environment variables (and arguments on the command line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tandem.app.security import is_loopback


DEFAULT_PORT = 8742
DATA_DIR_FILE = "data-dir"  # in config_dir(): the data folder chosen on the Settings page


def config_dir() -> Path:
    """Where Tandem keeps what must live outside the data folder (TANDEM_CONFIG_DIR overrides)."""
    env = os.environ.get("TANDEM_CONFIG_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_config_dir("tandem", appauthor=False))


def default_data_dir() -> Path:
    """The folder chosen on the Settings page, else the user's data folder."""
    try:
        chosen = (config_dir() / DATA_DIR_FILE).read_text().strip()
    except OSError:
        chosen = ""
    return Path(chosen) if chosen else Path(platformdirs.user_data_dir("tandem", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    # A GGUF path to serve instead of the built-in model.
    model: Path | None = None
    # Context length to plan for; 0 lets the planner take the longest that costs no speed.
    n_ctx: int = Field(4096, ge=0)
    # Left unset, the planner decides these from the hardware; set, they override its choice.
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int | None = Field(None, ge=-1)
    max_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    # Speculative decoding: "auto" (the plan's choice), "lookup", or "off".
    speculative: Literal["auto", "lookup", "off"] = "auto"
    # Disk space for saved conversation caches (instant resume); 0 turns saving off.
    context_cache_mb: int = Field(2048, ge=0)
    # A hardware profile (or raw capture) to use instead of probing this machine: plan for another one.
    hardware_profile: Path | None = None
    # Requests that may wait for a model while it writes another reply (past this: 429).
    max_queue: int = Field(16, ge=1, le=1024)
    # The most tokens one reply may have when the context shifts (under "stop" the context bounds it).
    max_reply_tokens: int = Field(8192, ge=16)
    # An idle model is unloaded after this many seconds (a request may set its own keep_alive;
    # negative: never).
    keep_alive_s: float = 15 * 60.0
    # The most RAM (MiB) loaded models may take together; 0: whatever is free.
    memory_budget_mb: int = Field(0, ge=0)
    # Extra Host header values to accept (e.g. a LAN name when serving beyond loopback).
    allowed_hosts: list[str] = []
    # Needed to serve beyond this machine (--host 0.0.0.0): other machines send it as a Bearer token.
    api_key: str | None = Field(None, min_length=16)
    # The hash of the key made on the Settings page or by `tandem api-key` (read at start).
    saved_key_hash: str | None = None
    # A remote server that sends nothing for this long (s) fails the reply.
    remote_timeout_s: float = Field(60.0, gt=0, le=3600)
    # Pooling with `tandem worker` machines over llama.cpp RPC: "auto" (when it pays or the model
    # does not fit here alone), "always" (whenever the workers have room), "off".
    pool: Literal["auto", "always", "off"] = "auto"
    # How many of a pooled model's layers the workers take, counted as llama.cpp's n_gpu_layers
    # counts them (the output layer is one, moved first when this machine has no GPU); unset: the
    # planner's choice.
    pool_layers: int | None = Field(None, ge=1)
    # Time llama.cpp's own CPU decode once per machine (a few seconds at the first start) for the
    # speed predictions; off: they rest on the memory read bandwidth and fitted constants.
    engine_bench: bool = True
    # The largest request body accepted (MiB); past it: 413.
    max_body_mb: int = Field(32, ge=1, le=4096)

    @field_validator("data_dir", "model", mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tandem.db"

    @property
    def context_cache_dir(self) -> Path:
        return self.data_dir / "contexts"

    @property
    def key_hash(self) -> str | None:
        """The hash other devices' key must match: TANDEM_API_KEY's, else the saved one."""
        from tandem.app.security import hash_key

        return hash_key(self.api_key) if self.api_key else self.saved_key_hash

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)
