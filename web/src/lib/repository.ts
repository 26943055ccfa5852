// What the pages say about a project's repository URL, as plain functions (unit-tested).

/**
 * Whether the server fetches `url` over SSH, and so with the organization's deploy key: `ssh://…`,
 * `git+ssh://…` and scp-like `user@host:path` (the server's own rule, `domain/src/reach.rs`, decides).
 */
export function usesSsh(url: string): boolean {
  const u = url.trim();
  if (/^(git\+)?ssh:\/\//i.test(u)) return true;
  if (u.includes('://')) return false;
  // scp-like: `user@host:path`, no slash before the colon.
  const colon = u.indexOf(':');
  if (colon <= 0) return false;
  const host = u.slice(0, colon);
  return host.includes('@') && !host.includes('/') && u.length > colon + 1;
}
