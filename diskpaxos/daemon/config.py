"""Daemon configuration: TOML, with defaults a sanlock admin would expect."""

from __future__ import annotations

import grp
import os
import tomllib
from dataclasses import dataclass, fields

from .. import errors
from ..timeouts import DEFAULT_IO_TIMEOUT, KILL_GRACE_SECONDS, WATCHDOG_FIRE_TIMEOUT

DEFAULT_CONFIG = "/etc/diskpaxos/diskpaxos.conf"
DEFAULT_RUN_DIR = "/run/diskpaxos"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    io_timeout: int = DEFAULT_IO_TIMEOUT
    watchdog_fire_timeout: int = WATCHDOG_FIRE_TIMEOUT
    socket_group: str | None = None
    kill_grace: int = KILL_GRACE_SECONDS
    log_level: str = "info"
    watchdog_device: str | None = None  # e.g. /dev/watchdog; None: the helper only kills clients
    fault_plan: str | None = None  # tests only: a fault_storage plan file for all lease I/O

    @property
    def socket_gid(self) -> int | None:
        if self.socket_group is None:
            return None
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError:
            raise errors.UsageError(f"socket_group {self.socket_group!r} is not a group on this host") from None


def load(path: str | None) -> Config:
    """The config at ``path`` (default location when None; missing default file: defaults)."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    if not os.path.exists(path):
        if explicit:
            raise errors.UsageError(f"config file {path} does not exist")
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise errors.UsageError(f"{path}: not valid TOML: {e}") from None
    known = {f.name: f.type for f in fields(Config)}
    for key in data:
        if key not in known:
            raise errors.UsageError(f"{path}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    cfg = Config(**data)
    for key in ("io_timeout", "watchdog_fire_timeout", "kill_grace"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise errors.UsageError(f"{path}: {key} must be a positive integer, got {value!r}")
    if cfg.io_timeout > 255:
        raise errors.UsageError(f"{path}: io_timeout {cfg.io_timeout} is above 255")
    if cfg.log_level not in LOG_LEVELS:
        raise errors.UsageError(f"{path}: log_level must be one of {', '.join(LOG_LEVELS)}")
    cfg.socket_gid  # validates the group name
    return cfg
