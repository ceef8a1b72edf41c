"""The everyday DICOM file tools: dump, modify, create (dump2dcm), img2dcm and
anonymize, as library functions; :mod:`.commands` puts them on the
``pacsnode`` command line."""

from __future__ import annotations

from .anonymize import (AnonymizationResult, Pseudonymizer, UIDMap, anonymize_dataset,
                        anonymize_paths)
from .common import NotDicomError, ToolError, parse_tag, read_dicom
from .create import create_from_dump, dataset_from_dump, parse_dump
from .dump import dataset_json, dump_dataset, dump_file
from .img2dcm import image_dataset, image_to_dicom
from .modify import apply_changes, modify_file, parse_change

__all__ = ["AnonymizationResult", "Pseudonymizer", "UIDMap", "anonymize_dataset", "anonymize_paths",
           "NotDicomError", "ToolError", "parse_tag", "read_dicom", "create_from_dump",
           "dataset_from_dump", "parse_dump", "dataset_json", "dump_dataset", "dump_file",
           "image_dataset", "image_to_dicom", "apply_changes", "modify_file", "parse_change"]
