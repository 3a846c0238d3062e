"""The bundle format alone (spec/bundle-format.md): manifest, record frames, tar, zstd frames,
reading, and the record-stream rules every reader applies. Nothing here touches SQLite."""
