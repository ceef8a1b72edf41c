"""``pacsnode token create|list|revoke``: API tokens in the index (the
options of ``serve`` say which index)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import click

from ..options import command_settings as _load, settings_options

#: The token commands only need to find the index.
_settings_options = settings_options("data_dir", "database_url")

__all__ = ["token"]


def _db(config_file: str | None, options: dict[str, Any]) -> Any:
    from ..index.db import Database
    settings = _load(config_file, options)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.index_url)


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@click.group("token")
def token() -> None:
    """API tokens for `auth = "on"`: a client sends `Authorization: Bearer
    <token>`.  Only a hash of each token is kept; a revocation counts from
    the next request on, in every serve on the same database."""


@token.command("create")
@click.argument("name")
@click.option("--role", required=True,
              type=click.Choice(["reader", "writer", "editor", "operator", "admin"]),
              help="What the token may do (each role includes the ones before it).")
@click.option("--expires-days", type=float, default=None,
              help="Refused after this many days (default: never).")
@_settings_options
def create(name: str, role: str, expires_days: float | None, config_file: str | None,
           **options: Any) -> None:
    """Make a token NAME and print it, once: it cannot be shown again."""
    from .tokens import TokenError, create_token
    db = _db(config_file, options)
    try:
        value = create_token(db, name, role, expires_days)
    except TokenError as exc:
        raise click.ClickException(exc.reason) from None
    finally:
        db.dispose()
    click.echo(value)
    click.echo(f"token {name!r} ({role}) created; it is shown only this once", err=True)


@token.command("list")
@_settings_options
def list_(config_file: str | None, **options: Any) -> None:
    """Every token: name, role, created, expires, state (active, expired,
    revoked)."""
    from .tokens import list_tokens
    db = _db(config_file, options)
    try:
        found = list_tokens(db)
    finally:
        db.dispose()
    now = time.time()
    rows = [("NAME", "ROLE", "CREATED", "EXPIRES", "STATE")]
    rows += [(t.name, t.role, _when(t.created), _when(t.expires),
              t.state(now) + (f" {_when(t.revoked)}" if t.revoked else "")) for t in found]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[4])


@token.command("revoke")
@click.argument("name")
@_settings_options
def revoke(name: str, config_file: str | None, **options: Any) -> None:
    """Revoke the token NAME: refused from the next request on."""
    from .tokens import revoke_token
    db = _db(config_file, options)
    try:
        done = revoke_token(db, name)
    finally:
        db.dispose()
    if not done:
        raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"token {name!r} revoked")
