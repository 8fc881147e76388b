"""The inspection record: every decision a daemon published, kept in a bounded SQLite store with the
heat maps of rejects, faults and a sample of passes, for the operator's view and for traceability."""
