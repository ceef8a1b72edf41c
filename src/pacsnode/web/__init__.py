"""HTTP face of the node (ASGI): DICOMweb under /dicomweb, REST API under /api/v1."""
