import { describe, expect, it } from 'vitest';
import { byAttribute, diff, rootCauses } from './diff';

const build = (attr: string, status: string, drv = `/nix/store/${attr}.drv`) => ({
  attributes: [attr],
  status,
  drv_path: drv,
  id: attr,
});

describe('diff', () => {
  it('sorts attributes into newly failing, newly fixed, still failing, new and removed', () => {
    const before = byAttribute([build('a', 'Completed'), build('b', 'Failed'), build('c', 'Failed'), build('gone', 'Completed')]);
    const now = byAttribute([build('a', 'Failed'), build('b', 'Completed'), build('c', 'DependencyFailed'), build('fresh', 'Queued')]);
    const d = diff(before, now);
    expect(d.newlyFailing.map((r) => r.attribute)).toEqual(['a']);
    expect(d.newlyFixed.map((r) => r.attribute)).toEqual(['b']);
    expect(d.stillFailing.map((r) => r.attribute)).toEqual(['c']);
    expect(d.added.map((r) => r.attribute)).toEqual(['fresh']);
    expect(d.removed.map((r) => r.attribute)).toEqual(['gone']);
  });
  it('does not call a still-running build fixed', () => {
    const d = diff(byAttribute([build('a', 'Failed')]), byAttribute([build('a', 'Building')]));
    expect(d.newlyFixed).toEqual([]);
    expect(d.newlyFailing).toEqual([]);
  });
});

describe('rootCauses', () => {
  it('points dependency failures at the failed build below them, through other dependency failures', () => {
    const builds = [
      { drv_path: 'lib', status: 'Failed' },
      { drv_path: 'mid', status: 'DependencyFailed' },
      { drv_path: 'app', status: 'DependencyFailed' },
      { drv_path: 'other', status: 'Failed' },
      { drv_path: 'orphan', status: 'DependencyFailed' },
      { drv_path: 'ok', status: 'Completed' },
    ];
    const inputs: Record<string, string[]> = { mid: ['lib', 'ok'], app: ['mid'], orphan: ['elsewhere'] };
    const groups = rootCauses(builds, (d) => inputs[d] ?? []);
    expect(groups.map((g) => [g.cause?.drv_path ?? null, g.dependents.map((b) => b.drv_path)])).toEqual([
      ['lib', ['mid', 'app']],
      ['other', []],
      [null, ['orphan']],
    ]);
  });
});
