"""Kindling's own JSON export format: reading, verifying and writing it."""
