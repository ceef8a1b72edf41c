"""``pacsnode reindex``: fill the extra query tags (``extra_query_tags``,
DESIGN.md §11) for instances already stored.

Reads each instance's header from the index (never the files), a batch per
transaction; interrupted, it resumes where it stopped the next time it runs
with the same declared tags (``--restart`` reads everything again).  Safe
while ``serve`` runs on the same database: new instances are filled on
ingest, and a value already recorded is recorded once.
"""

from __future__ import annotations

from typing import Any

import click

from .options import command_settings, settings_options

__all__ = ["reindex", "COMMANDS"]


@click.command("reindex")
@click.option("--restart", is_flag=True, help="Read every instance again, rather than "
              "resuming after the last batch an earlier run finished.")
@settings_options()  # DESIGN §11: the options of serve
def reindex(restart: bool, config_file: str | None, **options: Any) -> None:
    """Fill the extra query tags (extra_query_tags) for stored instances,
    with a progress bar; resumable."""
    from rich.progress import Progress

    from .dicom import extra_tags
    from .index.extra_index import reindex as fill
    from .node import Node

    settings = command_settings(config_file, options)
    node = Node(settings)
    try:
        tags = extra_tags.active()
        if not tags:
            raise click.ClickException("no extra_query_tags are declared in the "
                                       "configuration: nothing to index")
        with Progress(transient=False) as progress:
            task = progress.add_task("reindexing", total=None)

            def on_progress(last: int, total: int) -> None:
                progress.update(task, completed=last, total=max(total, last))

            seen = fill(node.db, tags, on_progress=on_progress, restart=restart)
        names = ", ".join(t.name + (f" ({t.creator})" if t.creator else "") for t in tags)
        click.echo(f"read {seen} instance(s); extra query tags: {names}")
    finally:
        node.close()


COMMANDS = [reindex]
