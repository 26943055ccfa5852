// Formatting shared by the pages: ages, durations, commits, status order and colour class.

export const BUILD_STATUSES = [
  'Failed',
  'DependencyFailed',
  'Aborted',
  'Building',
  'Queued',
  'Completed',
  'Substituted',
] as const;

/** Sort rank: failures first, then what is still moving, then what succeeded. */
export function statusRank(status: string): number {
  const i = (BUILD_STATUSES as readonly string[]).indexOf(status);
  return i === -1 ? BUILD_STATUSES.length : i;
}

/** The tone a status is drawn in. */
export function tone(status: string): 'bad' | 'good' | 'busy' | 'idle' {
  switch (status) {
    case 'Failed':
    case 'DependencyFailed':
    case 'Aborted':
      return 'bad';
    case 'Completed':
    case 'Substituted':
      return 'good';
    case 'Queued':
      return 'idle';
    default:
      return 'busy';
  }
}

/** Whether an evaluation (or build) status is final. */
export function isTerminal(status: string): boolean {
  return ['Completed', 'Failed', 'Aborted', 'Substituted', 'DependencyFailed'].includes(status);
}

/** Human words for a status (`DependencyFailed` → `dependency failed`). */
export function statusWords(status: string): string {
  return status.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
}

/** A duration in seconds as `1h 2m`, `3m 4s` or `5s`. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** The time between two instants (the second defaults to now), or '' without a start. */
export function between(start: string | null | undefined, end: string | null | undefined, now = Date.now()): string {
  if (!start) return '';
  const to = end ? Date.parse(end) : now;
  return duration((to - Date.parse(start)) / 1000);
}

/** How long ago: `just now`, `5 minutes ago`, `3 days ago`. */
export function age(at: string, now = Date.now()): string {
  const s = Math.round((now - Date.parse(at)) / 1000);
  if (s < 45) return 'just now';
  const units: [number, string][] = [
    [60 * 60 * 24 * 365, 'year'],
    [60 * 60 * 24 * 30, 'month'],
    [60 * 60 * 24, 'day'],
    [60 * 60, 'hour'],
    [60, 'minute'],
  ];
  for (const [size, name] of units) {
    if (s >= size) {
      const n = Math.round(s / size);
      return `${n} ${name}${n === 1 ? '' : 's'} ago`;
    }
  }
  return 'just now';
}

/** The first 8 characters of a commit hash. */
export function shortCommit(commit: string): string {
  return commit.slice(0, 8);
}

/** A store path's name without the hash (`/nix/store/abc…-hello-1.0.drv` → `hello-1.0.drv`). */
export function storeName(path: string): string {
  const base = path.split('/').pop() ?? path;
  const dash = base.indexOf('-');
  return dash === 32 ? base.slice(dash + 1) : base;
}

/** A link to a commit on its forge, when the repository URL is one we know how to link. */
export function commitUrl(repository: string, commit: string): string | null {
  const m = /^(?:https:\/\/|git@|ssh:\/\/git@)(github\.com|gitlab\.com|codeberg\.org)[/:](.+?)(?:\.git)?\/?$/.exec(
    repository.replace(/^git\+/, ''),
  );
  if (!m) return null;
  const [, host, repo] = m;
  return host === 'gitlab.com'
    ? `https://${host}/${repo}/-/commit/${commit}`
    : `https://${host}/${repo}/commit/${commit}`;
}

/** A size in bytes as people read it: `0 B`, `1.5 KiB`, `2.0 GiB`. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}
