"""The edges: local paths, stdio and URLs, atomic files, and progress reporting."""
