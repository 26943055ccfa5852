// What the browser runs of the web UI share (run.mjs, email.mjs, oidc.mjs): Debian's chromium driven by
// playwright-core (E2E_BROWSER to point elsewhere; never a downloaded browser), one 1280×900 page, the folder
// for screenshots (E2E_OUT), and axe-core's serious and critical findings on the page shown.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const axePath = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

/** The browser, its context and page, and the screenshot folder (made if missing). */
export async function openBrowser() {
  const out = process.env.E2E_OUT ?? 'test-output';
  mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.E2E_BROWSER ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  return { browser, context, page, out };
}

/** axe-core's serious and critical violations on the page as it is now, one line each. */
export async function axeViolations(page) {
  await page.addScriptTag({ path: axePath });
  return page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join('; ')}`);
  });
}

/** A screenshot of the settled page as `out/name.png`; answers its axe-core violations, each naming the page. */
export async function look(page, out, name) {
  await page.waitForLoadState('networkidle').catch(() => undefined);
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
  return (await axeViolations(page)).map((v) => `${name}: ${v}`);
}
