"""The QEMU front end's config: the keys of libvirt's ``qemu-sanlock.conf``, in libvirt's conf syntax.

So an admin can copy the ``qemu-sanlock.conf`` they have: ``key = value`` lines,
``#`` comments, integers, strings in double or single quotes (or triple double
quotes, across lines), lists in ``[...]``. Values are typed as libvirt's typed
getters type them: a bool is the integer 0 or 1, never a string. Unlike libvirt,
``host_id`` is always required (the front end always joins the lockspace), and
unknown keys are errors (a typo must not silently turn protection off).
Every error is one line: ``PATH:LINE: key: expected ..., got ...``.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
from dataclasses import dataclass, field
from typing import Any

from .. import errors

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/diskpaxos/qemu.conf"
DEFAULT_DISK_LEASE_DIR = "/var/lib/libvirt/sanlock"
ENV = "DISKPAXOS_QEMU_CONF"
MAX_HOST_ID = 2000
MAX_IO_TIMEOUT = 255
PATH_MAX = 1023          # SANLK_PATH_LEN - 1: a lease path must fit sanlock's path field
LEASE_FILE_NAME_LEN = 33  # "/" + 32 hex digits of the MD5 lease name
OBSOLETE_KEYS = ("ignore_readonly_and_shared_disks",)


class ConfigError(errors.UsageError):
    """A config file that is missing, malformed or has a wrong value; ``where`` is ``PATH[:LINE]``."""

    template = "{where}: {reason}"


@dataclass(frozen=True)
class QemuConfig:
    host_id: int
    auto_disk_leases: bool = False
    disk_lease_dir: str = DEFAULT_DISK_LEASE_DIR
    require_lease_for_disks: bool = True   # libvirt: not auto_disk_leases, when the key is absent
    io_timeout: int = 0                    # 0: the default (10 s)
    user: str | None = None                # name or +uid
    group: str | None = None               # name or +gid
    path: str | None = None                # where it was read from, for messages
    key_lines: tuple[tuple[str, int], ...] = field(default=(), repr=False, compare=False)

    def uid(self) -> int | None:
        """The uid that lease files are chowned to, or None to leave them as created."""
        return self._resolve("user", self.user, lambda name: pwd.getpwnam(name).pw_uid)

    def gid(self) -> int | None:
        """The gid that lease files are chowned to, or None to leave them as created."""
        return self._resolve("group", self.group, lambda name: grp.getgrnam(name).gr_gid)

    def _resolve(self, key: str, value: str | None, lookup: Any) -> int | None:
        """A name, ``+N``, or a bare number that is not a name, as libvirt resolves them."""
        if value is None:
            return None
        if value.startswith("+") and value[1:].isdigit():
            return int(value[1:])
        try:
            return lookup(value)
        except KeyError:
            if value.isdigit():
                return int(value)
        what = "user" if key == "user" else "group"
        raise _error(self.path or "config", dict(self.key_lines).get(key), key,
                     f"a {what} name on this host or +N", f"{value!r} (no such {what})")


def _error(path: str, line: int | None, key: str | None, expected: str, got: str) -> ConfigError:
    where = path if line is None else f"{path}:{line}"
    reason = f"expected {expected}, got {got}" if key is None else f"{key}: expected {expected}, got {got}"
    return ConfigError(where=where, reason=reason, file=path, line=line, key=key)


# --- libvirt's conf syntax ----------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+) | (?P<comment>\#[^\n]*) | (?P<newline>[\n;]) |
    (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*) | (?P<int>[+-]?[0-9]+) |
    (?P<triple>\"\"\"(?:.|\n)*?\"\"\") | (?P<string>"[^"\n]*"|'[^'\n]*') |
    (?P<punct>[=\[\],])
    """, re.VERBOSE)


def _tokens(text: str, path: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) for everything but spaces and comments."""
    out, pos, line = [], 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None and text[pos] in "\"'":
            raise _error(path, line, None, f"a closing {text[pos]} on the same line", "the end of the line")
        if m is None:
            raise _error(path, line, None, "a key, value or comment", f"{text[pos:pos + 20].splitlines()[0]!r}")
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            out.append((kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    return out


def _entries(text: str, path: str) -> list[tuple[str, Any, int]]:
    """(key, value, line) per ``key = value``; values are int, str or list."""
    tokens = _tokens(text, path)
    entries: list[tuple[str, Any, int]] = []
    i = 0

    def take(key: str | None) -> tuple[Any, int]:
        nonlocal i
        if i >= len(tokens):
            raise _error(path, tokens[-1][2], key, "a value", "the end of the file")
        kind, word, line = tokens[i]
        i += 1
        if kind == "newline":
            raise _error(path, line, key, "a value", "the end of the line")
        if kind == "int":
            return int(word), line
        if kind == "string":
            return word[1:-1], line
        if kind == "triple":
            return word[3:-3], line
        if word == "[":
            return take_list(key, line), line
        raise _error(path, line, key, "an integer, a quoted string or a list", repr(word))

    def take_list(key: str | None, line: int) -> list[Any]:
        nonlocal i
        items: list[Any] = []
        while True:
            while i < len(tokens) and tokens[i][0] == "newline":
                i += 1
            if i < len(tokens) and tokens[i][1] == "]":
                i += 1
                break
            items.append(take(key)[0])
            while i < len(tokens) and tokens[i][0] == "newline":
                i += 1
            if i >= len(tokens):
                raise _error(path, line, key, "']' closing the list", "the end of the file")
            if tokens[i][1] == ",":
                i += 1
            elif tokens[i][1] != "]":
                raise _error(path, tokens[i][2], key, "',' or ']' in the list", repr(tokens[i][1]))
        return items

    while i < len(tokens):
        kind, word, line = tokens[i]
        if kind == "newline":
            i += 1
            continue
        if kind != "name":
            raise _error(path, line, None, "a key name", repr(word))
        if i + 1 >= len(tokens) or tokens[i + 1][1] != "=":
            got = "the end of the line" if i + 1 >= len(tokens) or tokens[i + 1][0] == "newline" \
                else repr(tokens[i + 1][1])
            raise _error(path, line, word, "'=' after the key", got)
        i += 2
        value, _ = take(word)
        if i < len(tokens) and tokens[i][0] != "newline":
            raise _error(path, tokens[i][2], word, "the end of the line after the value", repr(tokens[i][1]))
        entries.append((word, value, line))
    return entries


# --- typed values, as libvirt's typed getters --------------------------------


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value}"


def _bool(key: str, value: Any, path: str, line: int) -> bool:
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _error(path, line, key, "0 or 1", _describe(value))


def _uint(key: str, value: Any, lo: int, hi: int, path: str, line: int) -> int:
    if isinstance(value, int) and lo <= value <= hi:
        return value
    raise _error(path, line, key, f"an integer {lo}..{hi}", _describe(value))


def _str(key: str, value: Any, path: str, line: int) -> str:
    if isinstance(value, str) and value:
        return value
    raise _error(path, line, key, "a non-empty quoted string", _describe(value))


KEYS = ("auto_disk_leases", "disk_lease_dir", "group", "host_id", "io_timeout", "require_lease_for_disks", "user")


def parse(text: str, path: str) -> QemuConfig:
    """The config in ``text``, read from ``path`` (named in every error)."""
    seen: dict[str, tuple[Any, int]] = {}
    for key, value, line in _entries(text, path):
        if key in OBSOLETE_KEYS:
            log.warning("%s:%d: %s is obsolete and ignored", path, line, key)
            continue
        if key not in KEYS:
            raise _error(path, line, key, f"one of the keys {', '.join(KEYS)}", "an unknown key")
        if key in seen:
            raise _error(path, line, key, "each key once", f"a second value (first on line {seen[key][1]})")
        seen[key] = (value, line)
    if "host_id" not in seen:
        raise _error(path, None, "host_id", f"an integer 1..{MAX_HOST_ID} (required: unique per host sharing "
                     "disk_lease_dir)", "no host_id line")
    values: dict[str, Any] = {}
    for key, (value, line) in seen.items():
        if key in ("auto_disk_leases", "require_lease_for_disks"):
            values[key] = _bool(key, value, path, line)
        elif key == "host_id":
            values[key] = _uint(key, value, 1, MAX_HOST_ID, path, line)
        elif key == "io_timeout":
            values[key] = _uint(key, value, 0, MAX_IO_TIMEOUT, path, line)
        else:
            values[key] = _str(key, value, path, line)
    if "disk_lease_dir" in values:
        lease_dir, line = values["disk_lease_dir"], seen["disk_lease_dir"][1]
        if not lease_dir.startswith("/"):
            raise _error(path, line, "disk_lease_dir", "an absolute path", repr(lease_dir))
        if len(lease_dir.encode()) + LEASE_FILE_NAME_LEN > PATH_MAX:
            raise _error(path, line, "disk_lease_dir",
                         f"at most {PATH_MAX - LEASE_FILE_NAME_LEN} bytes (a lease path fits {PATH_MAX})",
                         f"{len(lease_dir.encode())} bytes")
    values.setdefault("require_lease_for_disks", not values.get("auto_disk_leases", False))
    lines = tuple((key, line) for key, (_, line) in seen.items())
    return QemuConfig(**values, path=path, key_lines=lines)


def load(path: str | None = None) -> QemuConfig:
    """The config at ``path``; None: ``$DISKPAXOS_QEMU_CONF``, else :data:`DEFAULT_PATH`."""
    explicit = path is not None or bool(os.environ.get(ENV))
    path = path or os.environ.get(ENV) or DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(where=path, reason="config file not found", file=path, line=None, key=None) from None
        raise ConfigError(where=path, reason=f"config file not found: the QEMU front end expects its config here "
                          f"(or at ${ENV}), with at least host_id = N (1..{MAX_HOST_ID})",
                          file=path, line=None, key=None) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
        raise ConfigError(where=path, reason=f"cannot read config: {reason}", file=path, line=None, key=None) from None
    return parse(text, path)
