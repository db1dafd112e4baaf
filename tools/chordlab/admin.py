"""The one HTTP helper of the admin API.

`request()` sends `Authorization: Bearer TOKEN` whenever it is given a token file that
exists (the node writes `DATA/admin.token`, or reads `--admin-token-file`); without
one it sends no header. It never raises on an HTTP status: callers look at it.
"""
import json
import urllib.error
import urllib.request
import os
from pathlib import Path


class ApiError(Exception):
    """An admin API call that did not answer what the caller needs."""


def read_token(token_file):
    """The token in `token_file`, or None when there is no such file (yet)."""
    if token_file is None:
        return None
    try:
        return Path(token_file).read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def request(method, url, body=None, timeout=30.0, token_file=None, token=...):
    """(status, parsed JSON, or text, or None for an empty body) of one call.

    The token sent is the one in `token_file` unless `token` says otherwise: None
    sends no Authorization header, a string sends that token (tests of refusals).
    Raises OSError (connection refused, timeout) but never on an HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is ...:
        token = read_token(token_file)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def get_ok(url, timeout=5.0, token_file=None):
    """The parsed body of a GET that must answer 200; ApiError otherwise."""
    status, body = request("GET", url, timeout=timeout, token_file=token_file)
    if status != 200:
        raise ApiError(f"GET {url}: {status} {body}")
    return body


def private_file(path, text):
    """Writes `text` to `path` readable by its owner only (0600), as the node demands
    of token, password and key files; returns the path."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    path.chmod(0o600)
    return path


def new_token_file(path):
    """A fresh admin token (256 random bits, hex) in a 0600 file at `path`."""
    return private_file(path, os.urandom(32).hex() + "\n")
