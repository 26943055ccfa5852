// Single sign-on in a real browser: Debian's chromium (playwright-core) against a real gradient-server
// (GRADIENT_URL) whose OpenID Provider is the test's oidc-provider; started by tests/e2e/oidc.rs. From the sign-in
// page's button (with the provider's icon) through the provider's login and consent forms back to the web UI,
// signed in, on the page the visitor wanted. Screenshots go to E2E_OUT; axe-core checks the sign-in pages.
import { openBrowser, look as shoot } from './browser.mjs';
import { join } from 'node:path';

const base = process.env.GRADIENT_URL ?? 'http://127.0.0.1:3000';
const login = process.env.E2E_OIDC_LOGIN ?? 'scully';
const { browser, page, out } = await openBrowser();
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e}`));

async function look(name) {
  problems.push(...(await shoot(page, out, name)));
}

try {
  console.log('- a visitor wanting their account is sent to sign in');
  await page.goto(`${base}/account`);
  await page.waitForURL(/\/signin\?next=%2Faccount$/);
  const sso = page.getByRole('link', { name: 'Sign in with single sign-on' });
  await sso.waitFor();
  const icon = await sso.locator('img').getAttribute('src');
  if (icon !== process.env.E2E_OIDC_ICON) problems.push(`the button's icon is ${icon}`);
  await page.waitForLoadState('networkidle').catch(() => undefined);
  if (!(await sso.locator('img').evaluate((img) => img.complete && img.naturalWidth > 0))) {
    problems.push('the provider icon did not load');
  }
  await look('oidc-signin');

  console.log('- signs in at the provider');
  await sso.click();
  await page.locator('input[name=login]').fill(login);
  await page.locator('input[name=password]').fill('any password');
  await page.getByRole('button', { name: 'Sign-in' }).click();
  await page.getByRole('button', { name: 'Continue' }).click();

  console.log('- comes back signed in, on the page wanted');
  await page.waitForURL(/\/account$/);
  await page.getByRole('heading', { name: 'Account' }).waitFor();
  await page.getByText(login, { exact: true }).first().waitFor();
  await page.getByRole('heading', { name: 'Single sign-on' }).waitFor();
  if (!(await page.evaluate(() => localStorage.getItem('gradient.token')))) problems.push('no session token stored');
  if (page.url().includes('#')) problems.push(`the token stays in the address bar: ${page.url()}`);
  await look('oidc-account');
} catch (e) {
  await page.screenshot({ path: join(out, 'oidc-failure.png'), fullPage: true }).catch(() => undefined);
  console.error(`failed at ${page.url()}: ${e}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log(`ok: screenshots in ${out}`);
