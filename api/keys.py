"""API keys: long random tokens of which the server keeps only a SHA-256 hash, a name and a scope.

FACEREC_API_KEYS holds comma-separated entries ``name:scope:sha256hex``. Make a key and its entry with

    python -m api.keys new NAME --scope submit

which prints the key once (give it to the client) and the entry (put it in FACEREC_API_KEYS).

A key is 32 random bytes from ``secrets``, so a plain SHA-256 is enough: a 256-bit random token cannot be
guessed back from its hash. Slow password hashes (bcrypt, scrypt) exist for low-entropy passwords, which
these keys are not, and would cost milliseconds on every request.

Scopes are ordered, each including the ones before it: ``read`` (list and read jobs, models, reports),
``submit`` (also submit and cancel jobs), ``admin`` (also promote, roll back and manage schedules).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SCOPES = ("read", "submit", "admin")
KEY_PREFIX = "frk_"  # makes a leaked key recognisable to secret scanners and in a support ticket
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
ENTRY_FORMAT = "name:scope:sha256hex"


@dataclass(frozen=True)
class ApiKey:
    """One configured key: who it is (name), what it may do (scope) and the SHA-256 hex of the key."""

    name: str
    scope: str
    digest: str

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of a key, the only form in which the server stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def config_entry(name: str, scope: str, key: str) -> str:
    """The FACEREC_API_KEYS entry for a key (checked like any configured entry)."""
    entry = f"{name}:{scope}:{hash_key(key)}"
    parse_entry(entry, 1)
    return entry


def parse_entry(entry: str, position: int) -> ApiKey:
    """Parse one FACEREC_API_KEYS entry. The error names the entry by position, never by its text:
    a wrong entry is often a plain key, which must not end up in a log."""
    where = f"FACEREC_API_KEYS entry {position}"
    parts = entry.strip().split(":")
    if len(parts) != 3:
        raise ValueError(
            f"{where} is not {ENTRY_FORMAT}: it looks like a plain key, and the server stores only hashes. "
            "Make a key with `python -m api.keys new NAME --scope read|submit|admin` and configure the entry "
            "it prints")
    name, scope, digest = parts
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{where}: the name must be 1 to 64 letters, digits, '_', '.' or '-'")
    if scope not in SCOPES:
        raise ValueError(f"{where} ({name}): the scope must be one of {', '.join(SCOPES)}")
    if not DIGEST_PATTERN.fullmatch(digest.lower()):
        raise ValueError(f"{where} ({name}): the hash must be 64 hex digits (the SHA-256 of the key); "
                         "make one with `python -m api.keys new NAME`")
    return ApiKey(name, scope, digest.lower())


def parse_entries(entries: Iterable[str]) -> tuple[ApiKey, ...]:
    """Parse the configured entries; a malformed entry or a name used twice is refused."""
    keys = tuple(parse_entry(entry, i) for i, entry in enumerate(entries, 1) if entry.strip())
    names = [key.name for key in keys]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"FACEREC_API_KEYS names {', '.join(duplicates)} more than once: give each key its own name")
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.keys", description="Make API keys for FACEREC_API_KEYS.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a new key: prints the key once and its FACEREC_API_KEYS entry")
    new.add_argument("name", help="who or what uses the key (letters, digits, '_', '.', '-')")
    new.add_argument("--scope", choices=SCOPES, default="read",
                     help="read: read jobs and models; submit: also submit and cancel jobs; "
                          "admin: also promote, roll back and manage schedules (default: read)")
    args = parser.parse_args(argv)
    if not NAME_PATTERN.fullmatch(args.name):
        parser.error("NAME must be 1 to 64 letters, digits, '_', '.' or '-'")
    key = new_key()
    print(f"key (shown only now; give it to the client, who sends it in the X-API-Key header):\n{key}")
    print(f"entry for FACEREC_API_KEYS (comma-separate several):\n{config_entry(args.name, args.scope, key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
