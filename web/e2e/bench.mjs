// The UI benchmark (bench/web.sh): web/dist served by a small stand-in for gradient-server whose API answers
// with synthetic data, measured in Debian's chromium driven by playwright-core. Prints figures only.
import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { extname, join, normalize } from 'node:path';
import { gzipSync } from 'node:zlib';

const count = Number(process.argv[2] ?? 5000);
const dist = new URL('../dist/', import.meta.url).pathname;
const evalId = '00000000-0000-4000-8000-000000000001';
const now = new Date().toISOString();
const statuses = ['Completed', 'Completed', 'Completed', 'Substituted', 'Failed', 'DependencyFailed', 'Queued', 'Building'];
const builds = Array.from({ length: count }, (_, i) => ({
  id: `00000000-0000-4000-8000-${String(i + 10).padStart(12, '0')}`,
  drv_path: `/nix/store/${String(i).padStart(32, 'a')}-pkg-${i}.drv`,
  status: statuses[i % statuses.length],
  attributes: [`packages.x86_64-linux.pkg-${i}`],
  reused: i % 3 === 0,
  transitions: [{ status: 'Queued', at: now }],
  created_at: now,
  updated_at: now,
  started_at: now,
  finished_at: now,
}));
const evaluation = {
  id: evalId, project_id: evalId, commit: '0123456789abcdef0123456789abcdef01234567', branch: 'main',
  trigger: 'Manual', status: 'Failed', errors: [], transitions: [{ status: 'Queued', at: now }],
  created_at: now, updated_at: now,
};
const api = {
  '/api/v1/config': { registration_enabled: true, oidc_enabled: false, oidc_required: false, email_verification_required: false, version: 'bench' },
  '/api/v1/orgs': [],
  [`/api/v1/evals/${evalId}`]: { evaluation, builds: [], statuses: [] },
  [`/api/v1/evals/${evalId}/builds`]: builds,
  [`/api/v1/evals/${evalId}/diff`]: { previous: null, changes: [], root_causes: [] },
};
const types = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json' };

const server = createServer(async (req, res) => {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  if (path === `/api/v1/evals/${evalId}/events`) {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end('event: end\ndata: Failed\n\n');
    return;
  }
  if (path.startsWith('/api/')) {
    const body = api[path];
    res.writeHead(body === undefined ? 404 : 200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body === undefined ? { error: true, message: 'not here', code: 'not_found' } : { error: false, message: body }));
    return;
  }
  let file = normalize(join(dist, path));
  if (!file.startsWith(dist) || !existsSync(file) || statSync(file).isDirectory()) file = join(dist, 'index.html');
  res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
  res.end(await readFile(file));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.E2E_BROWSER ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });

// Initial JavaScript: every script the sign-in page loads, gzipped as a server would send it.
const scripts = new Map();
page.on('response', async (r) => {
  if (r.url().endsWith('.js')) scripts.set(r.url(), await r.body().catch(() => Buffer.alloc(0)));
});
await page.goto(`${base}/signin`);
await page.getByRole('heading', { name: 'Sign in' }).waitFor();
await page.waitForLoadState('networkidle');
const raw = [...scripts.values()].reduce((n, b) => n + b.length, 0);
const gz = [...scripts.values()].reduce((n, b) => n + gzipSync(b).length, 0);
console.log(`initial JavaScript: ${scripts.size} files, ${(raw / 1024).toFixed(1)} KiB, ${(gz / 1024).toFixed(1)} KiB gzipped (budget 250 KB)`);

// The evaluation page with `count` builds.
await page.evaluate(() => localStorage.setItem('gradient.token', 'bench'));
const started = Date.now();
await page.goto(`${base}/evals/${evalId}`);
await page.getByRole('region', { name: 'Builds' }).getByRole('listitem').first().waitFor({ timeout: 60000 });
const shown = Date.now() - started;
const rows = await page.getByRole('region', { name: 'Builds' }).getByRole('listitem').count();
console.log(`evaluation of ${count} builds: list shown after ${shown} ms, ${rows} rows in the DOM`);

// Scroll the list from top to bottom, one step per frame, recording every frame's duration.
const frames = await page.evaluate(async () => {
  const box = document.querySelector('[role=region][aria-label=Builds]');
  if (!box) throw new Error('no builds list');
  const step = 120;
  const times = [];
  let last = performance.now();
  while (box.scrollTop + box.clientHeight < box.scrollHeight - 1) {
    box.scrollTop += step;
    await new Promise((r) => requestAnimationFrame(r));
    const t = performance.now();
    times.push(t - last);
    last = t;
  }
  return times;
});
frames.sort((a, b) => a - b);
const pct = (p) => frames[Math.min(frames.length - 1, Math.floor((p / 100) * frames.length))].toFixed(1);
const long = frames.filter((f) => f > 50).length;
console.log(
  `scrolling to the bottom: ${frames.length} frames, median ${pct(50)} ms, p95 ${pct(95)} ms, max ${frames[frames.length - 1].toFixed(1)} ms, ${long} frames over 50 ms`,
);

await browser.close();
server.close();
