"""The options of the commands that open the node's archive (``serve``,
``import``, ``check``, ``token``): one click option per setting, declared
once in ``config.SETTINGS``, plus ``--config``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import SETTINGS, Setting, Settings, load_settings

__all__ = ["command_settings", "settings_options"]


def settings_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding one click option per setting named (``--data-dir``,
    ``--dicom-port``…, ``--fsync/--no-fsync``; every setting when none is
    named), so that each command lists only the settings it uses, and
    ``--config`` (whose TOML file may hold any setting) always."""
    chosen = [s for s in SETTINGS if s.cli and (not names or s.name in names)]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for setting in reversed(chosen):
            flag = "--" + setting.name.replace("_", "-")
            if setting.type is bool:
                func = click.option(flag + "/--no-" + setting.name.replace("_", "-"),
                                    setting.name, default=None, help=setting.help)(func)
                continue
            ctype: Any = {int: int, Path: click.Path(path_type=Path)}.get(setting.type, str)
            if setting.choices:
                ctype = click.Choice(setting.choices, case_sensitive=False)
            func = click.option(flag, setting.name, type=ctype, default=None,
                                help=_help(setting))(func)
        return click.option("--config", "config_file",
                            type=click.Path(exists=True, dir_okay=False),
                            help="TOML configuration file (options and [nodes.NAME]).")(func)

    return decorate


def _help(setting: Setting) -> str:
    """The option's help: the setting's, and its default unless that is
    empty (whose meaning the help says)."""
    if setting.default in ("", None):
        return setting.help
    return f"{setting.help} [default: {setting.default}]"


def command_settings(config_file: str | None, options: dict[str, Any]) -> Settings:
    """The settings of a command: defaults, then the TOML file, then the
    environment, then the options given; a bad value is a usage error."""
    try:
        return load_settings(config_file, overrides=options)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"configuration: {exc}") from None
