// What the account and organization pages say about sessions and audit entries, as plain functions (unit-tested).

/** A short name for the client behind a `User-Agent`: `Firefox on Linux`, `curl`, or `unknown client`. */
export function describeAgent(agent: string | null | undefined): string {
  if (!agent) return 'unknown client';
  const browsers: [RegExp, string][] = [
    [/Edg\//, 'Edge'],
    [/OPR\//, 'Opera'],
    [/Firefox\//, 'Firefox'],
    [/Chromium\//, 'Chromium'],
    [/HeadlessChrome\//, 'Headless Chrome'],
    [/Chrome\//, 'Chrome'],
    [/Safari\//, 'Safari'],
  ];
  const systems: [RegExp, string][] = [
    [/Android/, 'Android'],
    [/iPhone|iPad|iOS/, 'iOS'],
    [/Mac OS X|Macintosh/, 'macOS'],
    [/Windows/, 'Windows'],
    [/CrOS/, 'ChromeOS'],
    [/Linux|X11/, 'Linux'],
  ];
  const browser = browsers.find(([re]) => re.test(agent))?.[1];
  if (!browser) {
    // A program: its name without the version (`curl/8.5.0` → `curl`).
    const first = agent.trim().split(/[\s/]/)[0];
    return first || 'unknown client';
  }
  const system = systems.find(([re]) => re.test(agent))?.[1];
  return system ? `${browser} on ${system}` : browser;
}

/** `project.created` → `created project`, `push_cache.set` → `set push cache`. */
export function actionWords(action: string): string {
  const [what, verb] = action.split('.', 2);
  if (what === undefined || verb === undefined) return action.replaceAll('_', ' ');
  return `${verb.replaceAll('_', ' ')} ${what.replaceAll('_', ' ')}`;
}

/** Who acted, as the audit log shows it: the username, `the state document`, with `(API key)` for keys. */
export function actorWords(entry: { actor: string; via: string }): string {
  if (entry.via === 'state') return 'the state document';
  return entry.via === 'api_key' ? `${entry.actor} (API key)` : entry.actor;
}
