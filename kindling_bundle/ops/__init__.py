"""Operations, one job each, composed of the format, Kindling JSON and database layers:
write, verify and restore bundles, convert, diff and merge datasets."""
