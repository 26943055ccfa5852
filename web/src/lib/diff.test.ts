import { describe, expect, it } from 'vitest';
import { groupChanges, openFirst, summary, type Change } from './diff';

const change = (change: string, attribute: string): Change => ({
  change,
  attribute,
  status: 'Failed',
  previous_status: null,
  build: { drv_path: `/nix/store/${attribute}.drv`, build_id: null, attributes: [attribute], status: null },
});

describe('diff grouping', () => {
  it('orders groups by what broke first and sorts attributes', () => {
    const groups = groupChanges([
      change('new', 'z'),
      change('newly_fixed', 'b'),
      change('newly_failing', 'y'),
      change('newly_failing', 'x'),
      change('removed', 'gone'),
    ]);
    expect(groups.map((g) => [g.label, g.rows.map((r) => r.attribute)])).toEqual([
      ['Newly failing', ['x', 'y']],
      ['Newly fixed', ['b']],
      ['New', ['z']],
      ['Removed', ['gone']],
    ]);
    expect(summary(groups)).toBe('2 newly failing, 1 newly fixed, 1 new, 1 removed');
    expect(openFirst(groups)).toBe('newly_failing');
  });
  it('says when nothing changed and opens nothing', () => {
    expect(summary(groupChanges([]))).toBe('nothing changed');
    expect(openFirst(groupChanges([change('new', 'a')]))).toBeNull();
    expect(openFirst(groupChanges([change('still_failing', 'a')]))).toBe('still_failing');
  });
});
