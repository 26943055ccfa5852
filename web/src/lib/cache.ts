// What a person pastes to use a cache: the nix.conf lines and the netrc line.

/** `substituters` and `trusted-public-keys` lines for the cache `name` at `origin`. */
export function nixConf(origin: string, name: string, publicKey: string, priority: number | null): string {
  const url = `${origin.replace(/\/$/, '')}/cache/${name}${priority === null ? '' : `?priority=${priority}`}`;
  return `extra-substituters = ${url}\nextra-trusted-public-keys = ${publicKey}\n`;
}

/** The netrc line giving Nix an API key for this server (`host` may carry a port; netrc wants the name). */
export function netrcLine(host: string): string {
  return `machine ${host.replace(/:\d+$/, '')} login gradient password <your API key>`;
}
