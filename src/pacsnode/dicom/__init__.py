"""DICOM-side helpers: the attribute catalogue, value normalisation, DICOM JSON."""
