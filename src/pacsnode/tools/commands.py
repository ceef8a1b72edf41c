"""The file tools on the command line: ``dump``, ``modify``, ``create``,
``img2dcm``, ``anonymize``.  Thin: parse, call the tool, print; problems go
to standard error naming the file, and make the exit status 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import click

from .common import ToolError, read_dicom

__all__ = ["COMMANDS"]


def _error(command: str, message: str) -> None:
    click.echo(f"pacsnode {command}: {message}", err=True)


@contextmanager
def _exits_on_error(command: str, status: int = 1) -> Iterator[None]:
    """A ToolError in the block: its message on standard error, and exit."""
    try:
        yield
    except ToolError as exc:
        _error(command, str(exc))
        sys.exit(status)


@click.command("dump")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--json", "as_json", is_flag=True,
              help="Print the DICOM JSON model (PS3.18 F.2) instead of text; binary values "
                   "over 1 KiB are not included, their BulkDataURI names the file and tag.")
@click.option("--tag", "-P", "tags", multiple=True, metavar="KEY",
              help="Print only this attribute, wherever it occurs (like dcmdump +P); "
                   "a keyword or (gggg,eeee); may be repeated.")
@click.option("--full", "-L", is_flag=True,
              help="Print long values in full instead of cutting them with '...' "
                   "(like dcmdump +L); a full dump can be fed to 'pacsnode create'.")
def dump_command(files: Sequence[str], as_json: bool, tags: Sequence[str], full: bool) -> None:
    """Print the meta header and data set of DICOM files.

    The text is laid out like DCMTK's dcmdump: tag, VR, value, then after '#'
    the value length, the value multiplicity and the attribute name.  Files
    without preamble or meta header are read too.

    \b
    Examples:
      pacsnode dump image.dcm
      pacsnode dump --tag PatientName --tag "(0020,000d)" *.dcm
      pacsnode dump --json image.dcm | jq .
    """
    from .dump import as_written, dataset_json, dump_file
    from .common import parse_tag

    failed = False
    with _exits_on_error("dump", status=2):
        wanted = [int(parse_tag(k)) for k in tags]
    documents = []
    for path in files:
        try:
            if as_json:
                with as_written():
                    ds = read_dicom(path)
                    doc = dataset_json(ds, path)
                if wanted:
                    keep = {f"{t:08X}" for t in wanted}
                    doc = {k: v for k, v in doc.items() if k in keep}
                documents.append(doc)
            else:
                click.echo(dump_file(path, full=full, tags=tags), nl=False)
        except ToolError as exc:
            _error("dump", str(exc))
            failed = True
    if as_json and documents:
        body = documents[0] if len(files) == 1 else documents
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
    if failed:
        sys.exit(1)


@click.command("modify")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("-m", "--modify", "modify", multiple=True, metavar="KEY=VALUE",
              help="Change an attribute that is present (an error if it is not).")
@click.option("-i", "--insert", "insert", multiple=True, metavar="KEY=VALUE",
              help="Set an attribute, inserting it (and the sequence items on its path) "
                   "when absent.")
@click.option("-e", "--erase", "erase", multiple=True, metavar="KEY",
              help="Remove an attribute (an error if it is not present).")
@click.option("--no-backup", is_flag=True, help="Do not keep the original as FILE.bak.")
@click.option("--ignore-missing", is_flag=True,
              help="Skip -m and -e of attributes that are not present instead of failing.")
def modify_command(files: Sequence[str], modify: Sequence[str], insert: Sequence[str],
                   erase: Sequence[str], no_backup: bool, ignore_missing: bool) -> None:
    """Change, insert or erase attributes of DICOM files in place.

    KEY is a keyword (PatientName) or a tag ((0010,0010)); attributes inside
    sequence items are reached by a path such as
    ReferencedSeriesSequence[0].SeriesInstanceUID ([*]: every item).
    Multiple values are separated by a backslash.  Each value is checked
    against the attribute's VR; if any change fails the file is not touched.
    The file keeps its transfer syntax and is replaced atomically, after the
    original is copied to FILE.bak.  Changes to SpecificCharacterSet are made
    first, then erasures, insertions and modifications.

    \b
    Examples:
      pacsnode modify -m "StudyDescription=I changed that" image.dcm
      pacsnode modify -i "ReferencedSeriesSequence[0].SeriesInstanceUID=1.2.3" image.dcm
      pacsnode modify -e PatientBirthDate --no-backup *.dcm
    """
    from .modify import Operation, modify_file, parse_change

    if not (modify or insert or erase):
        _error("modify", "nothing to do: give -m, -i or -e")
        sys.exit(2)
    with _exits_on_error("modify", status=2):
        changes = [parse_change(Operation.ERASE, k) for k in erase] + \
            [parse_change(Operation.INSERT, k) for k in insert] + \
            [parse_change(Operation.MODIFY, k) for k in modify]
    # stable: SpecificCharacterSet first, then the order above
    charset_first = sorted(changes, key=lambda c: c.path[-1].tag != 0x00080005)
    failed = False
    for path in files:
        try:
            modify_file(path, charset_first, backup=not no_backup,
                        ignore_missing=ignore_missing)
        except ToolError as exc:
            _error("modify", str(exc))
            failed = True
    if failed:
        sys.exit(1)


@click.command("create")
@click.argument("out", metavar="OUT")
@click.option("--from-dump", "dump", required=True, metavar="DUMPFILE",
              help="The text dump to read ('-' for standard input).")
def create_command(out: str, dump: str) -> None:
    """Build a Part 10 DICOM file from a text dump (like DCMTK's dump2dcm).

    The dump has one element per line, as 'pacsnode dump --full' or
    'dcmdump +L' print them: (gggg,eeee) VR value.  Strings go in brackets,
    UIDs may be given as =Name, numbers bare, '\\' separates values,
    '(no value available)' is an empty value, '#' starts a comment.
    Sequences and items are written with their (fffe,e000) / (fffe,e00d) /
    (fffe,e0dd) lines.  Lines of group 0002 make the meta header; the rest of
    it is completed (Explicit VR Little Endian unless (0002,0010) says
    otherwise).  An empty dump gives a valid file with an empty data set.

    \b
    Examples:
      pacsnode dump --full one.dcm > two.dump
      echo "(0010,0010) PN [WORKSHOP01]" >> two.dump
      pacsnode create two.dcm --from-dump two.dump
    """
    from .create import create_from_dump

    with _exits_on_error("create"):
        notes = create_from_dump(out, dump)
    for note in notes:
        _error("create", f"warning: {dump}: {note}")


@click.command("img2dcm")
@click.argument("image", metavar="IMAGE")
@click.argument("out", metavar="OUT")
@click.option("--series-from", metavar="FILE",
              help="Copy patient, study and series attributes from this DICOM file: the "
                   "image joins its series.")
@click.option("--study-from", metavar="FILE",
              help="Copy patient and study attributes from this DICOM file: the image "
                   "starts a new series in its study.")
def img2dcm_command(image: str, out: str, series_from: str | None,
                    study_from: str | None) -> None:
    """Wrap a JPEG or PNG (or any image Pillow reads) as a Secondary Capture
    DICOM file.

    A baseline JPEG is kept byte for byte, encapsulated with the JPEG
    Baseline transfer syntax; other images are stored uncompressed.  Without
    --series-from/--study-from a new study and series are made.  Copied
    attributes follow the Secondary Capture IOD: a conditional one (e.g.
    Laterality) only when its condition holds, a value that breaks its VR
    is left out with a warning.

    \b
    Examples:
      pacsnode img2dcm photo.jpg photo.dcm --series-from ct/0001.dcm
      pacsnode img2dcm chart.png chart.dcm --study-from ct/0001.dcm
    """
    from .img2dcm import image_to_dicom

    notes: list[str] = []
    with _exits_on_error("img2dcm"):
        image_to_dicom(image, out, series_from=series_from, study_from=study_from, notes=notes)
    for note in notes:
        _error("img2dcm", f"warning: {series_from or study_from}: {note}")


@click.command("anonymize")
@click.argument("paths", nargs=-1, required=True, metavar="IN... OUT")
@click.option("--key", metavar="TEXT",
              help="The secret that pseudonyms and new UIDs are derived from: the same key "
                   "gives the same PatientID/PatientName/UIDs on every run.  Without --key "
                   "or --key-file a random key is used and the run cannot be repeated.")
@click.option("--key-file", metavar="FILE",
              help="Read the key from FILE (its bytes, a final line break left out); keeps "
                   "the key out of the shell history and the process list.")
@click.option("--uid-map", "uid_map", metavar="FILE",
              help="Write the map from new to original identifiers (UIDs and patients) to "
                   "FILE, readable by you only (mode 0600); refused inside the output folder. "
                   "Without it no map is written anywhere.")
@click.option("--keep", multiple=True, metavar="KEY",
              help="Leave this attribute as it is: a keyword, (gggg,eeee), or a pattern "
                   "such as (0009,xxxx) for a private group; may be repeated.")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-folders of IN folders.")
def anonymize_command(paths: Sequence[str], key: str | None, key_file: str | None,
                      uid_map: str | None, keep: Sequence[str], recursive: bool) -> None:
    """De-identify DICOM files with the PS3.15 Basic Application Level
    Confidentiality Profile.

    Each attribute of the profile's table (PS3.15 Table E.1-1) is removed,
    emptied, given a dummy value or has its UIDs replaced; private attributes
    are removed unless kept.  PatientID and PatientName get a pseudonym made
    from the original PatientID (ANON-<12 hex>, ANON^<12 hex>), so patients
    stay apart.  Pseudonyms and new UIDs are a keyed hash of the originals:
    the same --key gives the same ones on every run.  Pixel data is never
    changed: files marked BurnedInAnnotation=YES are reported.  IN may be
    files or folders; OUT is a file for a single input file, otherwise a
    folder that receives <SOPInstanceUID>.dcm files.  An input with the
    SOPInstanceUID of an earlier input is not written: a duplicate (same data
    set) or a conflict (different data set, exit status 1).

    \b
    Examples:
      pacsnode anonymize study/ anon/ --recursive --key-file ~/.anon-key
      pacsnode anonymize image.dcm anon.dcm --keep "(0009,xxxx)"
      pacsnode anonymize study/ anon/ -r --key-file ~/.anon-key --uid-map ~/private/map.json
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .anonymize import anonymize_paths, read_key_file

    if len(paths) < 2:
        _error("anonymize", "give at least one input and the output: IN... OUT")
        sys.exit(2)
    if key is not None and key_file is not None:
        _error("anonymize", "give either --key or --key-file, not both")
        sys.exit(2)
    inputs, out = list(paths[:-1]), paths[-1]
    with _exits_on_error("anonymize", status=2):
        secret: str | bytes | None = read_key_file(key_file) if key_file is not None else key
    console = Console(stderr=True)
    bar = Progress(TextColumn("anonymizing"), BarColumn(), MofNCompleteColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    task = bar.add_task("anonymize", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    def warn(message: str) -> None:
        (bar.console if console.is_terminal else console).print(
            f"pacsnode anonymize: {message}", markup=False, highlight=False, soft_wrap=True)

    with _exits_on_error("anonymize"), bar:
        summary = anonymize_paths(inputs, out, key=secret, keep=keep, uid_map=uid_map,
                                  recursive=recursive, progress=progress, warn=warn)
    for _path, reason in summary.failed:
        _error("anonymize", reason)
    if summary.random_key:
        _error("anonymize", "no --key given: pseudonyms and UIDs are random for this run; "
                            "pass --key or --key-file to make them repeatable")
    parts = [f"wrote {len(summary.written)} file(s) into {out} from {summary.inputs} input(s)"]
    if summary.duplicates:
        parts.append(f"{len(summary.duplicates)} duplicate(s) of an earlier input skipped "
                     "(same SOPInstanceUID, same data set)")
    if summary.conflicts:
        parts.append(f"{len(summary.conflicts)} not written: same SOPInstanceUID as an "
                     "earlier input but a different data set")
    parts.append(f"{len(summary.skipped)} skipped (not DICOM)")
    parts.append(f"{len(summary.failed)} failed")
    click.echo("anonymized: " + "; ".join(parts))
    if summary.map_path is not None:
        click.echo(f"UID map: {summary.map_path} ({summary.uid_count} UIDs, "
                   f"{summary.patient_count} patient(s); keep it private, it links the new "
                   "identifiers to the original ones)")
    if summary.burned_in:
        click.echo("BurnedInAnnotation=YES (pixels not changed; check them before sharing):")
        for path in summary.burned_in:
            click.echo(f"  {path}")
    if summary.failed or summary.conflicts:
        sys.exit(1)


COMMANDS: list[click.Command] = [dump_command, modify_command, create_command,
                                 img2dcm_command, anonymize_command]
