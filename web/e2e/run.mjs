// The browser end-to-end run: Debian's chromium driven by playwright-core (no browser is downloaded) against
// a real gradient-server (GRADIENT_URL) with a real worker; started by tests/e2e/web.rs, which then uses what
// the cache page said (written to E2E_RESULT) with real nix. Screenshots of every page, at 1280 px and 375 px,
// light and dark, go to E2E_OUT; axe-core checks every page and any serious or critical violation fails the run.
import { openBrowser, axeViolations } from './browser.mjs';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

const base = process.env.GRADIENT_URL ?? 'http://127.0.0.1:3000';
const repository = process.env.E2E_REPOSITORY;
const { browser, page, out } = await openBrowser();
const violations = [];
const consoleErrors = [];
page.on('pageerror', (e) => consoleErrors.push(String(e)));

function step(what) {
  console.log(`- ${what}`);
}

/** Screenshots (wide, narrow, dark) and an axe-core check of the page as it is now. */
async function look(name) {
  await page.waitForLoadState('networkidle').catch(() => undefined);
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
  await check(name, 'light');
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.screenshot({ path: join(out, `${name}-dark.png`), fullPage: true });
  await check(name, 'dark');
  await page.emulateMedia({ colorScheme: 'light' });
  await page.setViewportSize({ width: 375, height: 800 });
  await page.screenshot({ path: join(out, `${name}-375.png`), fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) violations.push(`${name}: the page is ${overflow}px wider than a 375px screen`);
  await page.setViewportSize({ width: 1280, height: 900 });
}

async function check(name, scheme) {
  for (const v of await axeViolations(page)) violations.push(`${name} [${scheme}]: ${v}`);
}

/** Polls `test` until it answers true, or fails after `timeout` ms saying what it waited for. */
async function until(test, timeout, what) {
  const deadline = Date.now() + timeout;
  while (!(await test())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function waitForText(locator, pattern, timeout) {
  await locator.filter({ hasText: pattern }).first().waitFor({ timeout });
}

try {
  step('a visitor is sent to the sign-in page');
  await page.goto(`${base}/`);
  await page.waitForURL(/\/signin\?next=%2F$/);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await look('signin');

  step('registers');
  await page.getByRole('link', { name: 'Register' }).click();
  await page.getByRole('heading', { name: 'Register' }).waitFor();
  await page.getByLabel('Username').fill('alice');
  await page.getByLabel('Full name').fill('Alice Liddell');
  await page.getByLabel('Email').fill('alice@example.com');
  await page.getByLabel('Password').fill('short');
  await page.getByRole('button', { name: 'Register' }).click();
  // The API's sentence, next to the field it is about.
  await page.locator('input[name=password] ~ *, .error').filter({ hasText: /password/i }).first().waitFor();
  await look('register-error');
  await page.getByLabel('Password').fill('a long enough password');
  await page.getByRole('button', { name: 'Register' }).click();
  await page.getByRole('heading', { name: 'Home' }).waitFor();

  step('creates an organization');
  await page.getByLabel('Name (in URLs)').fill('acme');
  await page.getByRole('button', { name: 'Create organization' }).click();
  await page.waitForURL(/\/orgs\/acme$/);

  step('creates a public cache the organization pushes to');
  await page.getByLabel('New cache name').fill('main');
  await page.getByLabel('Public', { exact: true }).check();
  await page.getByRole('button', { name: 'Create cache and push to it' }).click();
  await waitForText(page.locator('p'), /Push cache: main/, 10000);
  step('sees the co-located worker connected');
  await waitForText(page.locator('li'), /— connected · fetch, eval, build · x86_64-linux/, 30000);

  step('creates a project');
  await page.getByText('New project').click();
  await page.getByLabel('Name', { exact: true }).fill('demo');
  await page.getByLabel('Repository (git URL)').fill(repository);
  await page.getByLabel('Wildcard (empty: the server\'s default)').fill('packages.*.*');
  await page.getByRole('button', { name: 'Create project' }).click();
  await page.waitForURL(/\/orgs\/acme\/projects\/demo$/);
  await look('project-new');

  step('evaluates now and watches it go green without reloading');
  await page.getByRole('button', { name: 'Evaluate now' }).click();
  await page.waitForURL(/\/evals\/[0-9a-f-]+$/);
  const firstEval = page.url();
  await page.evaluate(() => (window.__sameDocument = true));
  await waitForText(page.getByTestId('evaluation-status'), /completed/, 240000);
  if (!(await page.evaluate(() => window.__sameDocument === true))) throw new Error('the evaluation page reloaded');
  await waitForText(page.getByRole('listitem'), /packages\.x86_64-linux\.c/, 10000);
  await look('evaluation-green');

  step('opens a built package and reads its output path');
  await page.getByRole('link', { name: 'packages.x86_64-linux.a' }).click();
  await page.getByTestId('output-out').waitFor();
  const output = (await page.getByTestId('output-out').textContent())?.trim();
  await waitForText(page.locator('pre.log'), /building a/, 20000);
  await look('build');

  step('changes the settings: an invalid wildcard is refused next to its field, then the checks are added');
  await page.goto(`${base}/orgs/acme/projects/demo`);
  // The form is filled from the API first; edit it after that.
  await page.waitForFunction(() => document.querySelector('input[name=wildcard]')?.value === 'packages.*.*');
  await page.getByLabel('Wildcard', { exact: true }).fill('');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await waitForText(page.locator('input[name=wildcard] + *, label:has(input[name=wildcard]) + .error'), /wildcard/i, 10000);
  await look('project-settings-error');
  await page.getByLabel('Wildcard', { exact: true }).fill('packages.*.*, checks.*.*');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.getByText('Saved.').waitFor();

  step('evaluates again: the failing check fails, live');
  await page.getByRole('button', { name: 'Evaluate now' }).click();
  await page.waitForURL((u) => /\/evals\/[0-9a-f-]+$/.test(u.pathname) && u.href !== firstEval);
  await waitForText(page.getByTestId('evaluation-status'), /failed/, 240000);
  await waitForText(page.locator('summary'), /New \(2\)/, 20000);
  await waitForText(page.locator('section'), /Failures by root cause/, 20000);
  await look('evaluation-failed');

  step('restarts the failed evaluation from its page: the failed builds run (and fail) again');
  const timeline = page.locator('ol.timeline > li');
  const before = await timeline.count();
  await page.getByRole('button', { name: 'Restart' }).click();
  // The page reloads itself after a restart: count the timeline's entries until Building and Failed are added.
  await until(async () => (await timeline.count().catch(() => 0)) >= before + 2, 240000, 'the restarted evaluation to fail again');
  await waitForText(page.getByTestId('evaluation-status'), /failed/, 240000);
  await page.getByRole('button', { name: 'Restart' }).waitFor();

  step("opens the failing build's log in one click");
  await page.locator('section[aria-labelledby=causes-h]').getByRole('link', { name: 'checks.x86_64-linux.fails' }).click();
  await waitForText(page.locator('pre.log'), /this check fails on purpose/, 20000);
  await page.locator('.line.err').first().waitFor();
  await look('build-failed');

  step('reads the cache page, with the path Nix just asked for among the recent hits');
  // What a Nix client substituting the output asks first.
  const hashPart = output.slice('/nix/store/'.length, '/nix/store/'.length + 32);
  const asked = await fetch(`${base}/cache/main/${hashPart}.narinfo`);
  if (asked.status !== 200) throw new Error(`the output's narinfo answered ${asked.status}`);
  await page.goto(`${base}/caches/main`);
  await waitForText(page.getByTestId('recent-hits'), output, 10000);
  await page.getByTestId('nix-conf').waitFor();
  await waitForText(page.getByTestId('nix-conf'), /extra-trusted-public-keys = \S*main:\S+/, 10000);
  await waitForText(page.getByTestId('cache-stats'), /^[1-9][0-9]* paths?, /, 10000);
  const nixConf = (await page.getByTestId('nix-conf').textContent()) ?? '';
  await look('cache');

  step('lists its sessions, and signs out the others');
  // A second session, from another client.
  const other = await fetch(`${base}/api/v1/auth/basic/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'user-agent': 'curl/8.5.0' },
    body: JSON.stringify({ loginname: 'alice', password: 'a long enough password' }),
  });
  const otherToken = (await other.json()).message;
  await page.goto(`${base}/account`);
  await waitForText(page.getByTestId('sessions'), /curl/, 10000);
  await waitForText(page.getByTestId('sessions'), /\(this browser\)/, 10000);
  await page.getByRole('button', { name: 'Sign out all other sessions' }).click();
  await page.getByTestId('sessions').locator('tbody tr').filter({ hasText: 'curl' }).waitFor({ state: 'detached' });
  const revoked = await fetch(`${base}/api/v1/user`, { headers: { authorization: `Bearer ${otherToken}` } });
  if (revoked.status !== 401) throw new Error(`a revoked session's token answered ${revoked.status}`);

  step('creates and revokes an API key');
  await page.getByLabel('Key name').fill('ci');
  await page.getByRole('button', { name: 'Create API key' }).click();
  await waitForText(page.getByTestId('new-key'), /^GRAD/, 10000);
  await look('account');
  await page.getByRole('button', { name: 'Revoke ci' }).click();
  await page.getByText('No API keys.').waitFor();

  step('the organization page, and home with the recent evaluations');
  await page.goto(`${base}/orgs/acme`);
  await waitForText(page.locator('td'), /failed/, 10000);
  // The audit log, for its admin: what alice did, newest first.
  await waitForText(page.getByTestId('audit-log'), /created project\s*project 'demo'/, 10000);
  await waitForText(page.getByTestId('audit-log'), /restarted evaluation/, 10000);
  await look('organization');
  await page.goto(`${base}/`);
  await waitForText(page.locator('td'), /acme\/demo/, 10000);
  await look('home');

  step('aborts a running evaluation from its page');
  // A new commit adds a check that runs for minutes, so the evaluation is surely running when aborted.
  const repoDir = fileURLToPath(repository);
  const original = readFileSync(join(repoDir, 'flake.nix'), 'utf8');
  // The run's nonce keeps the slow check a new derivation, never one a previous run built.
  const nonce = /nonce = "([0-9a-f]+)"/.exec(original)?.[1] ?? String(Date.now());
  const flake = original.replace(
    'checks.${system} = { inherit fails after; };',
    'checks.${system} = { inherit fails after; slow = derivation { name = "slow"; inherit system; builder = "/bin/sh"; ' +
      `nonce = "${nonce}"; args = [ "-c" "/usr/bin/sleep 300; echo > $out" ]; }; };`,
  );
  if (flake === original) throw new Error('the flake of tests/e2e/pipeline.rs changed: add the slow check another way');
  writeFileSync(join(repoDir, 'flake.nix'), flake);
  const git = (...args) =>
    execFileSync('git', args, {
      cwd: repoDir,
      env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@example.com', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@example.com' },
    });
  git('commit', '-q', '-am', 'a slow check');
  await page.goto(`${base}/orgs/acme/projects/demo`);
  await page.getByRole('button', { name: 'Evaluate now' }).click();
  await page.waitForURL(/\/evals\/[0-9a-f-]+$/);
  await waitForText(page.getByRole('listitem'), /checks\.x86_64-linux\.slow/, 240000);
  const slowEval = page.url();
  step("sees the slow build among the worker's current jobs on the organization page");
  await page.goto(`${base}/orgs/acme`);
  await waitForText(page.getByTestId('worker-jobs'), /build slow \(x86_64-linux\)/, 30000);
  await look('organization-jobs');
  await page.goto(slowEval);
  await page.getByRole('button', { name: 'Abort' }).click();
  await waitForText(page.getByTestId('evaluation-status'), /aborted/, 30000);
  await page.getByRole('button', { name: 'Restart' }).waitFor();
  await look('evaluation-aborted');

  step('signs out; a deep link signs in again and comes back');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(/\/signin/);
  await page.goto(`${base}/orgs/acme/projects/demo`);
  await page.waitForURL(/\/signin\?next=/);
  await page.getByLabel('Username or email').fill('alice');
  await page.getByLabel('Password').fill('a long enough password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/\/orgs\/acme\/projects\/demo$/);

  step('an expired session (401) goes to sign-in and back');
  await page.evaluate(() => localStorage.setItem('gradient.token', 'not-a-valid-token'));
  await page.goto(`${base}/orgs/acme`);
  await page.waitForURL(/\/signin\?next=%2Forgs%2Facme$/);

  writeFileSync(process.env.E2E_RESULT ?? join(out, 'result.json'), JSON.stringify({ nixConf, output }));
} catch (e) {
  await page.screenshot({ path: join(out, 'failure.png'), fullPage: true }).catch(() => undefined);
  console.error(`failed at ${page.url()}: ${e}`);
  console.error(`page errors: ${consoleErrors.join('\n')}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
if (consoleErrors.length) console.log(`page errors:\n${consoleErrors.join('\n')}`);
if (violations.length) {
  console.error(`accessibility and layout problems:\n${violations.join('\n')}`);
  process.exit(1);
}
console.log(`ok: screenshots in ${out}`);
