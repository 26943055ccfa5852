// The evaluation diff (`GET /evals/{id}/diff`) arranged for reading: the changes grouped in a fixed order with
// their labels, the group worth opening first, and a one-line summary.
import type { Schemas } from './api/client';

export type Change = Schemas['AttributeChangeView'];

export const GROUPS = [
  ['newly_failing', 'Newly failing'],
  ['newly_fixed', 'Newly fixed'],
  ['still_failing', 'Still failing'],
  ['new', 'New'],
  ['removed', 'Removed'],
] as const;

export interface Group {
  key: string;
  label: string;
  rows: Change[];
}

/** The non-empty groups, in the order people read them (what broke first), attributes sorted within. */
export function groupChanges(changes: Change[]): Group[] {
  return GROUPS.map(([key, label]) => ({
    key,
    label,
    rows: changes.filter((c) => c.change === key).sort((a, b) => a.attribute.localeCompare(b.attribute)),
  })).filter((g) => g.rows.length > 0);
}

/** "2 newly failing, 1 newly fixed" — or "nothing changed". */
export function summary(groups: Group[]): string {
  if (groups.length === 0) return 'nothing changed';
  return groups.map((g) => `${g.rows.length} ${g.label.toLowerCase()}`).join(', ');
}

/** The group to show open: what broke, else what still fails. */
export function openFirst(groups: Group[]): string | null {
  return groups.find((g) => g.key === 'newly_failing' || g.key === 'still_failing')?.key ?? null;
}
