"""DIMSE face of the node (pynetdicom)."""
