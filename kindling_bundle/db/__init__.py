"""Everything that touches SQLite: opening Kindling databases, their schema, rows, the
export and import primitives, the integrity report and sample data."""
