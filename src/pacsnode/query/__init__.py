"""One query engine for C-FIND and QIDO-RS: a Query of typed constraints
(model), built from a C-FIND identifier or QIDO parameters (parse), compiled
to SQL (sql), run and projected into data sets (engine)."""
