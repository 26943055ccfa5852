// What changed between two evaluations of a project, by attribute, and failures grouped by their root cause.

export interface Row {
  attribute: string;
  status: string;
  drv_path: string;
  id: string;
}

export interface Diff {
  newlyFailing: Row[];
  newlyFixed: Row[];
  stillFailing: Row[];
  added: Row[];
  removed: Row[];
}

const FAILED = new Set(['Failed', 'DependencyFailed', 'Aborted']);
const SUCCEEDED = new Set(['Completed', 'Substituted']);

export function isFailure(status: string): boolean {
  return FAILED.has(status);
}

/** One row per attribute (a build can be selected by several). */
export function byAttribute(builds: { attributes: string[]; status: string; drv_path: string; id: string }[]): Map<string, Row> {
  const out = new Map<string, Row>();
  for (const b of builds)
    for (const attribute of b.attributes) out.set(attribute, { attribute, status: b.status, drv_path: b.drv_path, id: b.id });
  return out;
}

/** Compares the current evaluation with the previous one, attribute by attribute. */
export function diff(previous: Map<string, Row>, current: Map<string, Row>): Diff {
  const d: Diff = { newlyFailing: [], newlyFixed: [], stillFailing: [], added: [], removed: [] };
  for (const [attr, now] of current) {
    const before = previous.get(attr);
    if (!before) d.added.push(now);
    else if (isFailure(now.status) && isFailure(before.status)) d.stillFailing.push(now);
    else if (isFailure(now.status)) d.newlyFailing.push(now);
    else if (SUCCEEDED.has(now.status) && isFailure(before.status)) d.newlyFixed.push(now);
  }
  for (const [attr, before] of previous) if (!current.has(attr)) d.removed.push(before);
  for (const list of Object.values(d) as Row[][]) list.sort((a, b) => a.attribute.localeCompare(b.attribute));
  return d;
}

export interface RootCause<B> {
  /** The build that failed by itself (or null when the failed dependency is not among the evaluation's builds). */
  cause: B | null;
  /** The builds that failed because of it. */
  dependents: B[];
}

/**
 * Groups failures by root cause: a `Failed` build is a cause; a `DependencyFailed` build belongs to every failed
 * build it depends on, following dependency-failed inputs through to the failure below. `inputs` gives the
 * `.drv` inputs of a build (those known; unknown ones count as none).
 */
export function rootCauses<B extends { drv_path: string; status: string }>(
  builds: B[],
  inputs: (drvPath: string) => string[],
): RootCause<B>[] {
  const byDrv = new Map(builds.map((b) => [b.drv_path, b]));
  const memo = new Map<string, Set<string>>();
  const causesOf = (drv: string, seen: Set<string>): Set<string> => {
    const known = memo.get(drv);
    if (known) return known;
    const out = new Set<string>();
    if (seen.has(drv)) return out;
    seen.add(drv);
    for (const input of inputs(drv)) {
      const b = byDrv.get(input);
      if (!b) continue;
      if (b.status === 'Failed') out.add(input);
      else if (b.status === 'DependencyFailed') for (const c of causesOf(input, seen)) out.add(c);
    }
    memo.set(drv, out);
    return out;
  };
  const groups = new Map<string | null, RootCause<B>>();
  const group = (drv: string | null) => {
    let g = groups.get(drv);
    if (!g) {
      g = { cause: drv === null ? null : (byDrv.get(drv) ?? null), dependents: [] };
      groups.set(drv, g);
    }
    return g;
  };
  for (const b of builds) if (b.status === 'Failed') group(b.drv_path);
  for (const b of builds) {
    if (b.status !== 'DependencyFailed') continue;
    const causes = causesOf(b.drv_path, new Set());
    if (causes.size === 0) group(null).dependents.push(b);
    for (const c of causes) group(c).dependents.push(b);
  }
  // The causes that broke the most first; the unknown group last.
  return [...groups.values()].sort(
    (a, b) => Number(a.cause === null) - Number(b.cause === null) || b.dependents.length - a.dependents.length,
  );
}
