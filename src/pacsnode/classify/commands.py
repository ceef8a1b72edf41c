"""``pacsnode classify``: classify files, folders and zips without a server.
Thin: parse, call ``offline.classify_paths``, print."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import click

__all__ = ["COMMANDS"]


def _error(message: str) -> None:
    click.echo(f"pacsnode classify: {message}", err=True)


@click.command("classify")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...",
                type=click.Path(exists=True))
@click.option("--rules", "rules_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="A rule file in data-transfer-station's classifyRules.json format; it "
                   "adds to and overrides the built-in rules (as classification_rules does "
                   "for the server).")
@click.option("--json", "as_json", is_flag=True,
              help='Print [{"SeriesInstanceUID", "classes", "SeriesDescription", '
                   '"instances"}] instead of lines.')
def classify_command(paths: Sequence[str], rules_file: str | None, as_json: bool) -> None:
    """Classify the series of DICOM files, folders (recursively) and zip
    files: T1, T2, FLAIR, PD, DWI, ADC, SWI, BOLD, DTI, localizer, fieldmap,
    axial (CT), derived, secondary-capture, and the classes of --rules.

    Files are grouped by SeriesInstanceUID; headers are read up to the pixel
    data.  One line per series, tab-separated: SeriesInstanceUID, the
    classes (comma-separated), SeriesDescription.  Files that are not DICOM
    are skipped and counted on standard error.

    \b
    Examples:
      pacsnode classify /media/cdrom
      pacsnode classify study.zip --json | jq '.[] | select(.classes | index("T1"))'
      pacsnode classify incoming/ --rules classifyRules.json
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .offline import classify_paths
    from .rules import RuleError, load_rules

    try:
        rules = load_rules(rules_file)
    except RuleError as exc:
        _error(str(exc))
        sys.exit(2)
    console = Console(stderr=True)
    bar = Progress(TextColumn("reading headers"), BarColumn(), MofNCompleteColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    task = bar.add_task("classify", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        result = classify_paths(list(paths), rules, progress=progress)
    if as_json:
        click.echo(json.dumps([s.as_json() for s in result.series], indent=2,
                              ensure_ascii=False))
    else:
        for s in result.series:
            click.echo(f"{s.series_uid}\t{','.join(s.classes)}\t{s.description}")
    if result.not_dicom:
        _error(f"skipped {len(result.not_dicom)} file(s) that are not DICOM, e.g. "
               f"{result.not_dicom[0]}")
    for message in result.unusable[:20]:
        _error(f"skipped {message}")
    if len(result.unusable) > 20:
        _error(f"… and {len(result.unusable) - 20} more files skipped")
    if not result.series:
        _error("no DICOM series found")
        sys.exit(1)
    if result.unusable:
        sys.exit(1)


def _reclassify_command() -> click.Command:
    from ..options import settings_options

    @click.command("reclassify")
    @settings_options()  # the options of serve
    def reclassify(config_file: str | None, **options: object) -> None:
        """Apply the current rules (built-in + classification_rules) to every
        series of the archive, e.g. after changing the rule file.  Takes the
        options of `serve`; safe while `serve` runs on the same index.  Prints
        how many series got each class."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        from ..options import command_settings
        from ..classes import reclassify_all, server_rules
        from ..node import Node
        from .rules import RuleError

        settings = command_settings(config_file, dict(options))
        try:
            rules = server_rules(settings)
        except RuleError as exc:
            raise click.ClickException(f"classification_rules: {exc}") from None
        node = Node(settings)
        console = Console(stderr=True)
        bar = Progress(TextColumn("classifying series"), BarColumn(), MofNCompleteColumn(),
                       console=console, transient=True, disable=not console.is_terminal)
        task = bar.add_task("reclassify", total=None)
        try:
            with bar:
                counts = reclassify_all(
                    node.db, rules, progress=lambda done, total: bar.update(
                        task, completed=done, total=total))
        finally:
            node.close()
        click.echo(f"classified {counts.pop('')} series")
        for name, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"  {name}\t{count}")

    return reclassify


COMMANDS: list[click.Command] = [classify_command, _reclassify_command()]
