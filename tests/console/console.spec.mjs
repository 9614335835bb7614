#!/usr/bin/env node
// A person's journey through the gateway's web console, in headless Chromium:
// sign in, see the dead letters, find the failure group of one consumer, open a
// message and see its body, replay the group with a reason and watch the job finish,
// then find the consumers' stats and the replay in the audit log.
//
// Uses Debian's chromium (playwright-core never downloads a browser). Run:
//   npm install --prefix tests/console
//   GATEWAY_URL=http://127.0.0.1:8080 ADMIN_EMAIL=… ADMIN_PASSWORD=… \
//   EXPECT_GROUP_DURABLE=email-calendar node tests/console/console.spec.mjs
//
// Environment: GATEWAY_URL, ADMIN_EMAIL, ADMIN_PASSWORD, EXPECT_GROUP_DURABLE
// (required); CHROMIUM_PATH (default /usr/bin/chromium); SCREENSHOT_DIR (default a
// fresh temp dir; one PNG per step); STEP_TIMEOUT_MS (default 15000); JOB_TIMEOUT_MS
// (how long the replay job may run, default 60000).
//
// Exit status 0 when every step passed; 1 with the failing step and why on stderr
// (plus a `failure.png` screenshot); 2 when the setup is wrong (missing variable,
// no browser).

import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

function setupError(message) {
  console.error(`console.spec: ${message}`);
  process.exit(2);
}

function env(name, fallback) {
  const value = process.env[name];
  if (value !== undefined && value !== '') return value;
  if (fallback === undefined) setupError(`${name} must be set`);
  return fallback;
}

const GATEWAY_URL = env('GATEWAY_URL').replace(/\/+$/, '');
const ADMIN_EMAIL = env('ADMIN_EMAIL');
const ADMIN_PASSWORD = env('ADMIN_PASSWORD');
const EXPECT_GROUP_DURABLE = env('EXPECT_GROUP_DURABLE');
const CHROMIUM_PATH = env('CHROMIUM_PATH', '/usr/bin/chromium');
const SCREENSHOT_DIR = env('SCREENSHOT_DIR', '') || mkdtempSync(join(tmpdir(), 'console-screenshots-'));
const STEP_TIMEOUT_MS = Number(env('STEP_TIMEOUT_MS', '15000'));
const JOB_TIMEOUT_MS = Number(env('JOB_TIMEOUT_MS', '60000'));

if (!/^[A-Za-z0-9_-]{1,64}$/.test(EXPECT_GROUP_DURABLE)) {
  setupError(`EXPECT_GROUP_DURABLE is not a durable name: ${EXPECT_GROUP_DURABLE}`);
}
if (!existsSync(CHROMIUM_PATH)) {
  setupError(`no browser at ${CHROMIUM_PATH} (apt-get install chromium, or set CHROMIUM_PATH)`);
}
mkdirSync(SCREENSHOT_DIR, { recursive: true });

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (err) {
  setupError(`playwright-core is not installed (npm install --prefix tests/console): ${err.message}`);
}

const tid = (id) => `[data-testid="${id}"]`;
let shot = 0;

async function screenshot(page, name) {
  shot += 1;
  const file = join(SCREENSHOT_DIR, `${String(shot).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** Fails with `message` when `condition` is false. */
function check(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM_PATH,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
});

// Script errors and CSP violations in the page fail the run: the console must work
// under its own Content-Security-Policy.
const pageProblems = [];
let current = 'start';
let exitCode = 0;
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(STEP_TIMEOUT_MS);
page.on('pageerror', (err) => pageProblems.push(`script error: ${err.message}`));
page.on('console', (msg) => {
  if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) {
    pageProblems.push(`CSP: ${msg.text()}`);
  }
});

async function step(name, fn) {
  current = name;
  const started = Date.now();
  await fn();
  check(pageProblems.length === 0, pageProblems.join('; '));
  const file = await screenshot(page, name);
  console.log(`ok   ${name} (${Date.now() - started} ms, ${file})`);
}

try {
  await step('login', async () => {
    await page.goto(`${GATEWAY_URL}/console`);
    await page.locator(tid('login-form')).waitFor({ state: 'visible' });
    await page.locator(tid('login-email')).fill(ADMIN_EMAIL);
    await page.locator(tid('login-password')).fill(ADMIN_PASSWORD);
    await page.locator(tid('login-submit')).click();
    // Signed in: the navigation shows, or the form says why not.
    await Promise.race([
      page.locator(tid('nav')).waitFor({ state: 'visible' }),
      page.locator(tid('login-error')).waitFor({ state: 'visible' }),
    ]);
    if (await page.locator(tid('login-error')).isVisible()) {
      throw new Error(`sign-in refused: ${await page.locator(tid('login-error')).textContent()}`);
    }
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'mesh_session');
    check(session && session.httpOnly && session.sameSite === 'Strict',
      'the session cookie is missing or not HttpOnly + SameSite=Strict');
  });

  await step('dead-letters', async () => {
    await page.locator(tid('nav-dead-letters')).click();
    await page.locator(tid('dl-row')).first().waitFor({ state: 'visible' });
    const rows = await page.locator(tid('dl-row')).count();
    check(rows >= 1, 'the dead-letter list is empty');
    console.log(`     ${rows} dead letter(s) on the first page`);
  });

  await step('groups', async () => {
    await page.locator(tid('nav-groups')).click();
    const groups = page.locator(`${tid('group-row')}[data-durable="${EXPECT_GROUP_DURABLE}"]`);
    await groups.first().waitFor({ state: 'visible' });
    const parked = await groups.first().locator(tid('group-parked')).textContent();
    console.log(`     ${await groups.count()} group(s) of ${EXPECT_GROUP_DURABLE}, first with ${parked} parked`);
  });

  await step('filtered-list', async () => {
    await page.locator(tid('nav-dead-letters')).click();
    await page.locator(tid('dl-filters')).waitFor({ state: 'visible' });
    await page.locator(tid('filter-durable')).fill(EXPECT_GROUP_DURABLE);
    await page.locator(tid('filter-status')).selectOption('parked');
    await page.locator(tid('filter-apply')).click();
    await page.waitForURL((url) => url.hash.includes(`durable=${EXPECT_GROUP_DURABLE}`));
    await page.locator(tid('dl-row')).first().waitFor({ state: 'visible' });
    const texts = await page.locator(tid('dl-row')).allTextContents();
    check(texts.every((t) => t.includes(EXPECT_GROUP_DURABLE)),
      `the filtered list shows rows of other consumers: ${texts.join(' | ')}`);
  });

  await step('message-detail', async () => {
    await page.locator(`${tid('dl-row')} ${tid('dl-link')}`).first().click();
    const body = page.locator(tid('detail-body'));
    await body.waitFor({ state: 'visible' });
    await page.waitForFunction(
      (sel) => (document.querySelector(sel)?.textContent || '').trim().length > 0,
      tid('detail-body'),
    );
    const text = await body.textContent();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new Error(`the body shown is not JSON: ${err.message}: ${text.slice(0, 200)}`);
    }
    check(parsed !== null && typeof parsed === 'object', `the body shown is not a JSON object: ${text.slice(0, 200)}`);
    const diagnosis = await page.locator(tid('diagnosis')).textContent();
    check(diagnosis.includes(EXPECT_GROUP_DURABLE), 'the diagnosis does not name the consumer');
  });

  await step('replay-group', async () => {
    await page.locator(tid('nav-groups')).click();
    const group = page
      .locator(`${tid('group-row')}[data-durable="${EXPECT_GROUP_DURABLE}"]`)
      .filter({ has: page.locator(`${tid('replay-group')}:not([disabled])`) })
      .first();
    await group.waitFor({ state: 'visible' });
    await group.locator(tid('replay-group')).click();
    await page.locator(tid('reason')).fill('console browser test: the cause is fixed');
    await page.locator(tid('confirm-action')).click();
    await page.locator(tid('job-status')).waitFor({ state: 'visible' });
    console.log(`     job started: ${await page.locator(tid('job-status')).textContent()}`);
  });

  await step('replay-completed', async () => {
    await page.waitForFunction(
      (sel) => {
        const status = document.querySelector(sel)?.textContent;
        return status === 'completed' || status === 'failed';
      },
      tid('job-status'),
      { timeout: JOB_TIMEOUT_MS },
    );
    const status = await page.locator(tid('job-status')).textContent();
    const progress = await page.locator(tid('job-progress')).textContent();
    check(status === 'completed', `the replay job ended ${status}: ${progress}`);
    console.log(`     job completed: ${progress}`);
  });

  await step('stats', async () => {
    await page.locator(tid('nav-stats')).click();
    await page.locator(tid('dlq-depth')).waitFor({ state: 'visible' });
    await page.locator(tid('consumer-table')).waitFor({ state: 'visible' });
    const depth = await page.locator(tid('dlq-messages')).textContent();
    console.log(`     ${await page.locator(tid('consumer-row')).count()} consumer(s), ${depth} message(s) in the DLQ stream`);
  });

  await step('audit', async () => {
    await page.locator(tid('nav-audit')).click();
    await page.locator(tid('audit-table')).waitFor({ state: 'visible' });
    const rows = await page.locator(tid('audit-row')).allTextContents();
    check(rows.some((r) => r.includes('console browser test')), 'the replay is not in the audit log');
  });

  console.log(`console journey passed; screenshots in ${SCREENSHOT_DIR}`);
} catch (err) {
  exitCode = 1;
  console.error(`FAIL ${current}: ${err.message.split('\n')[0]}`);
  if (pageProblems.length) console.error(`     page problems: ${pageProblems.join('; ')}`);
  try {
    console.error(`     screenshot: ${await screenshot(page, 'failure')}`);
    console.error(`     page URL: ${page.url()}`);
    const flash = page.locator(tid('flash'));
    if (await flash.isVisible()) console.error(`     page says: ${await flash.textContent()}`);
  } catch (_) {
    // The page may be gone; the message above is what matters.
  }
} finally {
  await browser.close();
}
process.exit(exitCode);
