"""A generator of realistic Kindling memory, so every command can be tried without Kindling.

The mix follows what a coding agent records: many short messages and tool calls, some commands
with output, multi-kilobyte diffs, stack traces, unicode text; sessions as capsules (some still
open) with workflow-node capsules inside them; summaries for most closed capsules; pins on
observations and summaries, some expiring; about 1% of observations redacted. The same seed
always gives the same database content (on the same Python: the realistic text comes from its
standard library, see `realistic`). The `small-vocabulary` text is the word salad of the first
version, kept because a small vocabulary is the hard case for the benchmark's baseline.

`generate` writes the database; `realistic` and `small_vocabulary` are the two text profiles.
"""

from kindling_bundle.db.sample.generate import TEXT_PROFILES, SampleStats, generate_sample

__all__ = ["TEXT_PROFILES", "SampleStats", "generate_sample"]
