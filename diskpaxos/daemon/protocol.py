"""The daemon's socket protocol: one JSON object per line, versioned.

Request:  {"v": 1, "id": <any>, "op": "<name>", ...arguments}
Reply:    {"v": 1, "id": <same>, "ok": true, ...results}
      or  {"v": 1, "id": <same>, "ok": false, "code": <sanlock-style code>, "error": "<one line>"}

A line is at most MAX_LINE bytes; longer input, bad JSON, a wrong version,
an unknown op or arguments of the wrong type get an error reply and never
stop the daemon.  Operations and their arguments are listed in ``OPS``;
``v`` is the integer 1, list arguments are lists of strings, and strings are
valid Unicode without NUL.  An error reply echoes the id whenever the line was
a JSON object; a last line cut off by EOF (no newline) gets an error reply too.
"""

from __future__ import annotations

import errno
import json
from typing import Any

VERSION = 1
MAX_LINE = 64 * 1024

# op -> {argument: (type, required)}
OPS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "add_lockspace": {"lockspace": (str, True), "io_timeout": (int, False), "host_name": (str, False)},
    "rem_lockspace": {"lockspace": (str, True)},
    "inq_lockspace": {"lockspace": (str, True)},
    "register": {"pid": (int, False), "name": (str, False), "info": (str, False)},
    "set_killpath": {"pid": (int, False), "argv": (list, True)},
    "acquire": {"pid": (int, False), "resources": (list, True)},
    "release": {"pid": (int, False), "resources": (list, False)},
    "convert": {"pid": (int, False), "resource": (str, True), "shared": (bool, True)},
    "inquire": {"pid": (int, False)},
    "request": {"resource": (str, True), "force_mode": (int, False)},
    "read_owners": {"resource": (str, True)},
    "status": {},
    "host_status": {"lockspace": (str, True)},
    "renewal": {"lockspace": (str, True)},
    "metrics": {},
    "shutdown": {},
}


class ProtocolError(Exception):
    def __init__(self, message: str, code: int = -errno.EINVAL, req_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.req_id = req_id  # the request's id, when the line was a JSON object


def decode(line: bytes) -> dict[str, Any]:
    """A request line as a validated dict, or ProtocolError."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request is longer than {MAX_LINE} bytes", -errno.E2BIG)
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"not JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    if not isinstance(req, dict):
        raise ProtocolError("a request is a JSON object")
    try:
        return _validate(req)
    except ProtocolError as e:
        e.req_id = req.get("id")
        raise


def _validate(req: dict[str, Any]) -> dict[str, Any]:
    v = req.get("v")
    if type(v) is not int or v != VERSION:  # not true, not 1.0
        raise ProtocolError(f"protocol version {v!r} is not supported (this daemon speaks {VERSION})")
    op = req.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"unknown op {op!r}", -errno.EOPNOTSUPP)
    spec = OPS[op]
    for key, value in req.items():
        if key in ("v", "id", "op"):
            continue
        if key not in spec:
            raise ProtocolError(f"{op}: unknown argument {key!r}")
        want = spec[key][0]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ProtocolError(f"{op}: {key} must be {getattr(want, '__name__', want)}")
        if want is list and not all(isinstance(item, str) for item in value):
            raise ProtocolError(f"{op}: {key} must be a list of strings")
        for text in value if want is list else [value] if want is str else []:
            try:
                text.encode()  # JSON may carry lone surrogates ("\\ud800"): not text, and no path
            except UnicodeEncodeError:
                raise ProtocolError(f"{op}: {key} is not valid Unicode") from None
            if "\0" in text:  # no name, path or argv word can hold one
                raise ProtocolError(f"{op}: {key} contains a NUL character")
    for key, (_, required) in spec.items():
        if required and key not in req:
            raise ProtocolError(f"{op}: missing argument {key!r}")
    return req


def encode(reply: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(reply, separators=(",", ":"), default=str)
    except RecursionError:  # an id nested just too deep for the encoder (the decoder took it): answer without it
        text = json.dumps({**reply, "id": None}, separators=(",", ":"), default=str)
    return text.encode() + b"\n"


def ok(req_id: Any, **results: Any) -> bytes:
    return encode({"v": VERSION, "id": req_id, "ok": True, **results})


def error(req_id: Any, code: int, message: str) -> bytes:
    # one line, all of it: a path from the request may hold line breaks ("\n", "\x1e", "\u2028"), even first
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return encode({"v": VERSION, "id": req_id, "ok": False, "code": code, "error": text or "error"})
