"""The options of the commands that open the node's archive (``serve``,
``import``, ``check``, ``token``): one click option per setting, declared
once in ``config.SETTINGS``, plus ``--config``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import SETTINGS, Settings, load_settings

__all__ = ["command_settings", "settings_options"]


def settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with one option per setting (``--data-dir``,
    ``--dicom-port``…, ``--fsync/--no-fsync``) and ``--config``."""
    for setting in reversed(SETTINGS):
        if not setting.cli:
            continue
        flag = "--" + setting.name.replace("_", "-")
        if setting.type is bool:
            func = click.option(flag + "/--no-" + setting.name.replace("_", "-"),
                                setting.name, default=None, help=setting.help)(func)
        else:
            ctype = {int: int, Path: click.Path(path_type=Path)}.get(setting.type, str)
            func = click.option(flag, setting.name, type=ctype, default=None,
                                help=f"{setting.help} [default: {setting.default}]")(func)
    return click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                        help="TOML configuration file (options and [nodes.NAME]).")(func)


def command_settings(config_file: str | None, options: dict[str, Any]) -> Settings:
    """The settings of a command: defaults, then the TOML file, then the
    environment, then the options given; a bad value is a usage error."""
    try:
        return load_settings(config_file, overrides=options)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"configuration: {exc}") from None
