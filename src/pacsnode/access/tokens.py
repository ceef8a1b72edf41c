"""API tokens: made by ``pacsnode token create``, checked on every request.

A token is ``pn_`` followed by 32 random bytes (``secrets``, base64url).
The index keeps only its SHA-256.  A slow password hash (bcrypt, scrypt,
Argon2) protects *guessable* secrets from a stolen table by making each
guess expensive; a token with 256 random bits cannot be guessed, however
fast the hash, so a plain SHA-256 loses nothing and lets every request be
checked with one lookup on a unique index instead of a deliberate 100 ms.

No cache: each request reads the row (one indexed query, on a connection
the pool keeps open; tests/test_auth_tokens.py measures it), so a revocation by any process on the same
database counts from the next request on.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import PacsnodeError
from ..index.access_tables import api_tokens
from ..index.db import Database
from .roles import Role, role_named

__all__ = ["TOKEN_PREFIX", "TokenInfo", "TokenError", "create_token", "list_tokens",
           "revoke_token", "TokenLookup", "hash_token"]

TOKEN_PREFIX = "pn_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")


class TokenError(PacsnodeError):
    """A token name, role or lifetime that cannot be right, or a name taken."""

    http_status = 400


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    created: float
    expires: float | None
    revoked: float | None

    def state(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return "active"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_token(db: Database, name: str, role: str, expires_days: float | None = None
                 ) -> str:
    """Store a new token's hash under ``name``; return the token (shown once)."""
    if not NAME_RE.match(name or ""):
        raise TokenError(f"invalid token name {name!r}: 1-64 letters, digits, '_', '.', "
                         "'@', '-', starting with a letter or digit")
    named = role_named(role)
    if named is None:
        raise TokenError(f"unknown role {role!r}: one of "
                         + ", ".join(r.label for r in Role))
    if expires_days is not None and expires_days <= 0:
        raise TokenError("--expires-days must be more than 0")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    row = dict(name=name, token_hash=hash_token(token), role=named.label,
               created=now,
               expires=None if expires_days is None else now + expires_days * 86400.0,
               revoked=None)
    try:
        with db.write() as conn:
            conn.execute(insert(api_tokens).values(**row))
    except IntegrityError:
        raise TokenError(f"a token named {name!r} exists already (revoked ones too keep "
                         "their name)") from None
    return token


def list_tokens(db: Database) -> list[TokenInfo]:
    with db.read() as conn:
        rows = conn.execute(select(api_tokens.c.name, api_tokens.c.role, api_tokens.c.created,
                                   api_tokens.c.expires, api_tokens.c.revoked)
                            .order_by(api_tokens.c.created)).all()
    return [TokenInfo(r.name, r.role, r.created, r.expires, r.revoked) for r in rows]


def revoke_token(db: Database, name: str) -> bool:
    """Revoke the token ``name``; False when there is none (or it was already)."""
    with db.write() as conn:
        done = conn.execute(update(api_tokens)
                            .where(api_tokens.c.name == name, api_tokens.c.revoked.is_(None))
                            .values(revoked=time.time()))
    return bool(done.rowcount)


@dataclass(frozen=True)
class TokenPrincipal:
    name: str
    role: Role


class TokenLookup:
    """Checks a presented token against the index: one SELECT on the unique
    ``token_hash`` index, on a pooled DBAPI connection (the SQLAlchemy layer
    would cost more than the query)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        stmt = select(api_tokens.c.name, api_tokens.c.role, api_tokens.c.expires,
                      api_tokens.c.revoked).where(api_tokens.c.token_hash == "")
        compiled = stmt.compile(dialect=db.engine.dialect)
        self._sql = compiled.string
        self._positional = db.engine.dialect.positional
        self._param = next(iter(compiled.params))

    def _params(self, digest: str) -> tuple[str] | dict[str, str]:
        return (digest,) if self._positional else {self._param: digest}

    def check(self, token: str) -> TokenPrincipal | str:
        """The token's principal, or the reason it is refused."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return "not an API token"
        raw = self.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(self._sql, self._params(hash_token(token)))
            row = cur.fetchone()
            cur.close()
            if not self.db.is_sqlite:
                raw.rollback()  # end the read transaction psycopg opened
        finally:
            raw.close()
        if row is None:
            return "unknown token"
        name, role, expires, revoked = row
        if revoked is not None:
            return f"token {name!r} was revoked"
        if expires is not None and expires <= time.time():
            return f"token {name!r} expired"
        found = role_named(role)
        if found is None:
            return f"token {name!r} has an unknown role"
        return TokenPrincipal(name, found)
