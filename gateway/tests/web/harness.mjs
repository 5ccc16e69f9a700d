// Test harness for the web client: the real `confab` binary on loopback, Debian's
// Chromium driven by playwright-core, and small helpers that wait for the page.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

/** How long any single expectation waits for the page. */
export const WAIT_MS = 10_000;

const BIN = process.env.CONFAB_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** A loopback port nobody listens on now (so a restarted server can keep its address). */
export async function freePort() {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

export function freshDir() {
  return mkdtempSync(join(tmpdir(), "confab-web-"));
}

/** Start the server on `port` and `dir`; resolves once it printed its ready line. */
export async function startServer({ port, dir }) {
  if (!BIN) throw new Error("CONFAB_BIN must name the confab binary (scripts/test.sh sets it)");
  const child = spawn(
    BIN,
    [
      "--http-port", String(port), "--tcp-port", "0", "--shards", "2",
      "--argon2-memory-kib", "1024", "--argon2-iterations", "1", "--data-dir", dir,
    ],
    { stdio: ["ignore", "pipe", "inherit"], env: { ...process.env, RUST_LOG: "warn" } },
  );
  const lines = createInterface({ input: child.stdout });
  const ready = await Promise.race([
    once(lines, "line").then(([line]) => line),
    once(child, "exit").then(([code]) => {
      throw new Error(`confab exited (${code}) before it was ready`);
    }),
    sleep(20_000).then(() => {
      throw new Error("confab did not print its ready line in 20 s");
    }),
  ]);
  if (!ready.startsWith("confab ready ")) throw new Error(`unexpected first line: ${ready}`);
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    /** SIGKILL, and wait until the process is gone. */
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, "exit");
      child.kill("SIGKILL");
      await exited;
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // As root in a closed network: no sandbox, and none of Chromium's background
    // connections (they would be refused, many at a time).
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `probe` until it returns a value `accept` takes; fail with the last value seen.
 * A probe that throws counts as "not yet" until the deadline: the page may pass through
 * a state the probe cannot read. One seen in CI (our reading of it): in the instant
 * between a resent message's store and its ack, a history reload shows it stored while
 * the outbox still shows it pending, and a strict locator on its tick matched two
 * elements. A state that persists still fails, with the probe's last error. */
export async function eventually(what, probe, accept, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await probe();
      lastError = undefined;
      if (accept(last)) return last;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) {
      if (lastError) throw lastError;
      throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    }
    await sleep(50);
  }
}

/** A browser context (a person's browser) with a page on the client, and the list of
 * uncaught page errors seen on it. */
export async function person(browser, url, storageState) {
  const context = await browser.newContext({ storageState, viewport: { width: 1000, height: 640 } });
  const page = await context.newPage();
  // Uncaught exceptions in the page: every test asserts there were none.
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(url);
  return { context, page, errors };
}

/** Register through the login form; resolves when the chat view is up and online. */
export async function registerAs(page, username, password = "correct horse battery") {
  await page.fill("#login-username", username);
  await page.fill("#login-password", password);
  await page.click("#register-button");
  await waitOnline(page);
}

export async function waitOnline(page) {
  await page.waitForSelector('#connection[data-state="online"]', { timeout: WAIT_MS });
}

export async function openDirect(page, username) {
  await page.fill("#new-direct-username", username);
  await page.click("#new-direct button");
  await page.waitForFunction(
    (name) => document.querySelector("#conversation-title")?.textContent === name,
    username,
    { timeout: WAIT_MS },
  );
}

export async function send(page, text) {
  await page.fill("#composer-text", text);
  await page.press("#composer-text", "Enter");
}

/** The texts of the open conversation, in display order. */
export function shownTexts(page) {
  return page.locator("#message-list li.message:not(.system) .text").allTextContents();
}

export async function waitTexts(page, expected) {
  return eventually(
    `messages ${JSON.stringify(expected)}`,
    () => shownTexts(page),
    (texts) => JSON.stringify(texts) === JSON.stringify(expected),
  );
}

/** The tick of my message with `text` in the open conversation. */
export function tickOf(page, text) {
  return page
    .locator("#message-list li.message.mine", { hasText: text })
    .locator(".tick")
    .getAttribute("data-tick", { timeout: WAIT_MS });
}

export async function waitTick(page, text, tick) {
  return eventually(`"${text}" to be ${tick}`, () => tickOf(page, text), (t) => t === tick);
}

/** The unread badge of a conversation in the list ("" when none). */
export async function unreadOf(page, title) {
  const item = page.locator("#conversations li", { hasText: title });
  if ((await item.count()) === 0) return null;
  const badge = item.locator(".unread");
  return (await badge.count()) ? badge.textContent() : "";
}

export async function openFromList(page, title) {
  await page.locator("#conversations li", { hasText: title }).first().click();
  await page.waitForFunction(
    (t) => document.querySelector("#conversation-title")?.textContent === t,
    title,
    { timeout: WAIT_MS },
  );
}

export function cleanup(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/** A name unique to this run, so reruns against one data dir never collide. */
export function uniqueName(prefix) {
  return `${prefix}_${Math.random().toString(36).slice(2, 8)}`;
}
