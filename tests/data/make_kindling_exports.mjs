// Writes the Kindling JSON export fixtures in this folder the way Kindling itself writes them:
// rows as its SQLite store holds them, mapped to objects by the same code as Kindling's
// exportDatabase (JSON.parse of the JSON columns, `?? undefined` for absent optional values,
// its ORDER BY), wrapped as createExportBundle does, and serialized with JSON.stringify.
// Run with `node tests/data/make_kindling_exports.mjs` to regenerate them on purpose.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const T = 1767225600000;

// Rows as Kindling's store holds them (JSON columns are JSON.stringify text).
const observations = [
  ['obs-01', 'message', 'Refactor the tokenizer — keep behaviour, ünïcödé ✓ 🚀', { source: 'claude-code', turn: 1 }, T + 10, { sessionId: 's-1', repoId: 'r-1' }, 0],
  ['obs-02', 'tool_call', 'Read src/tokenizer.ts', { tool: 'Read', args: { path: 'src/tokenizer.ts', limit: 200 }, ok: true, ratio: 0.5, big: 1e21, tiny: 1e-7, none: null }, T + 20, { sessionId: 's-1', repoId: 'r-1', taskId: 't-9' }, 0],
  ['obs-03', 'command', '$ npm test\n\t3 passed, 1 failed\n"quoted" \\ backslash', { exitCode: 1, durationMs: 1234.5 }, T + 30, { sessionId: 's-1', repoId: 'r-1' }, 0],
  ['obs-04', 'file_diff', '--- a/x.ts\n+++ b/x.ts\n@@ -1 +1 @@\n-old\n+new\n', { files: ['x.ts'], nested: [[1, 2], { deep: [] }] }, T + 30, { sessionId: 's-1', repoId: 'r-1' }, 0],
  ['obs-05', 'error', '[redacted]', { source: 'claude-code' }, T + 40, { sessionId: 's-1', repoId: 'r-1' }, 1],
  ['obs-06', 'node_start', 'node plan started', {}, T + 50, { sessionId: 's-1', agentId: 'a-1' }, 0],
  ['obs-07', 'node_output', 'plan: 3 steps', { step: 'plan' }, T + 60, { sessionId: 's-1', agentId: 'a-1' }, 0],
  ['obs-08', 'node_error', 'step 2 timed out', {}, T + 65, { sessionId: 's-1', agentId: 'a-1' }, 0],
  ['obs-09', 'node_end', 'node plan finished', {}, T + 70, { sessionId: 's-1', agentId: 'a-1' }, 0],
  ['obs-10', 'message', '[redacted]', {}, T + 80, { sessionId: 's-2', userId: 'u-1' }, 1],
  ['obs-11', 'message', 'second session, control char \u0001 and line sep \u2028', {}, T + 90, { sessionId: 's-2', userId: 'u-1' }, 0],
  ['obs-12', 'message', 'an observation in no capsule', {}, T + 95, {}, 0],
].map(([id, kind, content, provenance, ts, scope, redacted]) => ({
  id, kind, content, provenance: JSON.stringify(provenance), ts,
  scope_ids: JSON.stringify(scope), redacted,
}));

const capsules = [
  { id: 'cap-s1', type: 'session', intent: 'Refactor the tokenizer', status: 'closed', opened_at: T + 5, closed_at: T + 100, scope_ids: JSON.stringify({ sessionId: 's-1', repoId: 'r-1' }) },
  { id: 'cap-node', type: 'pocketflow_node', intent: 'plan', status: 'closed', opened_at: T + 45, closed_at: T + 75, scope_ids: JSON.stringify({ sessionId: 's-1', agentId: 'a-1' }) },
  { id: 'cap-s2', type: 'session', intent: 'Still open', status: 'open', opened_at: T + 78, closed_at: null, scope_ids: JSON.stringify({ sessionId: 's-2', userId: 'u-1' }) },
];
// capsule_observations rows: (capsule_id, observation_id, seq); order within a capsule is seq,
// deliberately not the observations' ts order.
const links = [
  ['cap-s1', 'obs-03', 0], ['cap-s1', 'obs-01', 1], ['cap-s1', 'obs-02', 2], ['cap-s1', 'obs-05', 3], ['cap-s1', 'obs-04', 4],
  ['cap-node', 'obs-06', 0], ['cap-node', 'obs-07', 1], ['cap-node', 'obs-08', 2], ['cap-node', 'obs-09', 3],
  ['cap-s2', 'obs-11', 0], ['cap-s2', 'obs-10', 1],
];
const summaries = [
  { id: 'sum-s1', capsule_id: 'cap-s1', content: 'Tokenizer refactored; one test still fails.', confidence: 0.85, created_at: T + 101, evidence_refs: JSON.stringify(['obs-03', 'obs-05']) },
  { id: 'sum-node', capsule_id: 'cap-node', content: 'Planned three steps.', confidence: 1, created_at: T + 76, evidence_refs: JSON.stringify([]) },
];
const pins = [
  { id: 'pin-obs', target_type: 'observation', target_id: 'obs-03', reason: 'the failing test', created_at: T + 102, expires_at: null, scope_ids: JSON.stringify({ sessionId: 's-1', repoId: 'r-1' }) },
  { id: 'pin-sum', target_type: 'summary', target_id: 'sum-s1', reason: null, created_at: T + 103, expires_at: T + 86400000, scope_ids: JSON.stringify({ repoId: 'r-1' }) },
  { id: 'pin-redacted', target_type: 'observation', target_id: 'obs-10', reason: 'keep even though redacted', created_at: T + 104, expires_at: null, scope_ids: JSON.stringify({}) },
];

const byKeys = (...keys) => (a, b) => {
  for (const k of keys) {
    if (a[k] < b[k]) return -1;
    if (a[k] > b[k]) return 1;
  }
  return 0;
};

// The mapping of Kindling's exportDatabase (store-sqlite src/store/export.ts).
function exportDatabase({ scope, includeRedacted = false } = {}, exportedAt) {
  const inScope = (row) => !scope || Object.entries(scope).every(([k, v]) => JSON.parse(row.scope_ids)[k] === v);
  const obs = observations
    .filter((r) => inScope(r) && (includeRedacted || r.redacted === 0))
    .sort(byKeys('ts', 'id'))
    .map((row) => ({
      id: row.id, kind: row.kind, content: row.content, provenance: JSON.parse(row.provenance),
      ts: row.ts, scopeIds: JSON.parse(row.scope_ids), redacted: row.redacted === 1,
    }));
  const caps = capsules.filter(inScope).sort(byKeys('opened_at', 'id')).map((row) => ({
    id: row.id, type: row.type, intent: row.intent, status: row.status, openedAt: row.opened_at,
    closedAt: row.closed_at ?? undefined, scopeIds: JSON.parse(row.scope_ids),
    observationIds: links.filter((l) => l[0] === row.id).sort((a, b) => a[2] - b[2]).map((l) => l[1]),
  }));
  const capIds = new Set(capsules.filter(inScope).map((c) => c.id));
  const sums = summaries.filter((s) => capIds.has(s.capsule_id)).sort(byKeys('created_at', 'id')).map((row) => ({
    id: row.id, capsuleId: row.capsule_id, content: row.content, confidence: row.confidence,
    createdAt: row.created_at, evidenceRefs: JSON.parse(row.evidence_refs),
  }));
  const ps = pins.filter(inScope).sort(byKeys('created_at', 'id')).map((row) => ({
    id: row.id, targetType: row.target_type, targetId: row.target_id, reason: row.reason ?? undefined,
    createdAt: row.created_at, expiresAt: row.expires_at ?? undefined, scopeIds: JSON.parse(row.scope_ids),
  }));
  return { version: '1.0', exportedAt, scope, observations: obs, capsules: caps, summaries: sums, pins: ps };
}

// createExportBundle + serializeBundle (kindling-core src/export/bundle.ts).
function bundle(options, exportedAt, metadata) {
  const b = { bundleVersion: '1.0', exportedAt, dataset: exportDatabase(options, exportedAt) };
  if (metadata) b.metadata = metadata;
  return b;
}

const write = (name, text) => writeFileSync(join(here, name), text);
// Every entity and relationship, redacted rows present.
write('kindling-full.json', JSON.stringify(bundle({ includeRedacted: true }, T + 200000)));
// Kindling's default: redacted observations left out, while capsule links, evidence and a pin
// still name them.
write('kindling-default.json', JSON.stringify(bundle({}, T + 200001)));
// A scoped export with metadata, pretty-printed (serializeBundle(bundle, true)).
write('kindling-scoped-pretty.json', JSON.stringify(
  bundle({ scope: { sessionId: 's-1' }, includeRedacted: true }, T + 200002, { description: 'session 1', tags: ['tokenizer'] }),
  null, 2));
