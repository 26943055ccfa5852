// The web UI's mail pages in Debian's chromium (playwright-core), started by tests/e2e/email.rs against a real
// server mailing through a real SMTP server whose deliveries the test writes to E2E_INBOX (JSON lines): the
// verification link opens /verify-email; "Forgot your password?" on the sign-in page mails a reset link that
// opens /reset-password; the account page's switch turns mail about evaluations off. axe-core checks each page.
import { openBrowser, look as shoot } from './browser.mjs';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';

const base = process.env.GRADIENT_URL;
const inbox = process.env.E2E_INBOX;
const { browser, page, out } = await openBrowser();
const problems = [];

async function look(name) {
  problems.push(...(await shoot(page, out, name)));
}

/** The link to `path` in the first mail whose subject is `subject`, waiting up to 30 s for it. */
async function link(subject, path) {
  for (let i = 0; i < 300; i++) {
    let lines = [];
    try {
      lines = readFileSync(inbox, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
    } catch {
      // Nothing delivered yet.
    }
    const mail = lines.find((m) => m.subject === subject);
    const found = mail?.body.match(new RegExp(`${base}/${path}\\?token=[A-Za-z0-9_-]+`));
    if (found) return found[0];
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no mail "${subject}" with a ${path} link`);
}

try {
  console.log('- the verification link verifies the address');
  await page.goto(await link('Confirm your email address for Gradient', 'verify-email'));
  await page.getByTestId('verified').waitFor();
  await look('verify-email');

  console.log('- "Forgot your password?" mails a reset link');
  await page.goto(`${base}/signin`);
  await page.getByRole('link', { name: 'Forgot your password?' }).click();
  await page.getByRole('heading', { name: 'Forgot your password' }).waitFor();
  await look('forgot-password');
  await page.getByLabel('Email').fill('ada@example.com');
  await page.getByRole('button', { name: 'Send the link' }).click();
  await page.getByRole('status').filter({ hasText: /on its way/ }).waitFor();

  console.log('- the reset link sets a new password');
  await page.goto(await link('Reset your Gradient password', 'reset-password'));
  await page.getByRole('heading', { name: 'Choose a new password' }).waitFor();
  await look('reset-password');
  await page.getByLabel('New password').fill('a brand new password');
  await page.getByLabel('The same again').fill('a brand new password');
  await page.getByRole('button', { name: 'Set the password' }).click();
  await page.getByTestId('password-set').waitFor();

  console.log('- signs in with it and turns mail about evaluations off');
  await page.goto(`${base}/signin`);
  await page.getByLabel('Username or email').fill('ada');
  await page.getByLabel('Password').fill('a brand new password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL((u) => !u.pathname.startsWith('/signin'));
  await page.goto(`${base}/account`);
  const mailSwitch = page.getByLabel('Mail me when a project of my organizations starts failing or is fixed');
  await mailSwitch.waitFor();
  if (!(await mailSwitch.isChecked())) throw new Error('evaluation mail starts on');
  await look('account-mail');
  await Promise.all([page.waitForResponse((r) => r.url().endsWith('/api/v1/user/mail') && r.request().method() === 'PUT'), mailSwitch.uncheck()]);
  await page.reload();
  await mailSwitch.waitFor();
  if (await mailSwitch.isChecked()) throw new Error('the switch did not stay off');
} catch (e) {
  await page.screenshot({ path: join(out, 'email-failure.png'), fullPage: true }).catch(() => undefined);
  console.error(`failed at ${page.url()}: ${e}`);
  await browser.close();
  process.exit(1);
}
await browser.close();
if (problems.length) {
  console.error(`accessibility problems:\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('ok');
