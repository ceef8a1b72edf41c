"""Side-by-side benchmarks of pacsnode, Orthanc and DCMTK's storescp.

Run with ``make bench`` (or ``python -m bench --quick`` for a short smoke
run).  Nothing here is imported by pacsnode or its tests.
"""
