#!/usr/bin/env node
// Drives the chat page of a running `ember serve` in headless Chromium, as a person
// would: waits for the model name, sets temperature 0 and 24 max tokens, types a
// question, clicks Send, waits for the streamed answer, checks it and the tokens/s
// line, and saves a screenshot.
//
// Usage:
//   node browser_test.mjs --url http://127.0.0.1:PORT --screenshot OUT.png
//                         [--expect-text TEXT] [--api-key KEY] [--prompt TEXT]
//
// Chromium comes from $CHROMIUM (default /usr/bin/chromium, Debian's package).
// Prints one JSON line {"ok":true,"reply":...,"stats":...} and exits 0, or prints
// why it failed and exits 1.

import puppeteer from "puppeteer-core";
import { parseArgs } from "node:util";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string" },
    screenshot: { type: "string" },
    "expect-text": { type: "string" },
    "api-key": { type: "string" },
    prompt: { type: "string", default: "Hello, who are you?" },
    "max-tokens": { type: "string", default: "24" },
    timeout: { type: "string", default: "60" }, // seconds for the reply to stream
  },
  strict: true,
});

if (!opts.url) {
  console.error("usage: node browser_test.mjs --url http://127.0.0.1:PORT --screenshot OUT.png [--expect-text TEXT] [--api-key KEY]");
  process.exit(2);
}

const REPLY_TIMEOUT_MS = Number(opts.timeout) * 1000;
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

class Failure extends Error {}
const check = (cond, message) => { if (!cond) throw new Failure(message); };

// Replaces an input's value by typing into it (select all, then type), so that the
// page sees the same events as from a keyboard.
async function typeInto(page, selector, text) {
  await page.click(selector, { clickCount: 3 });
  await page.keyboard.down("Control");
  await page.keyboard.press("KeyA");
  await page.keyboard.up("Control");
  await page.keyboard.press("Backspace");
  await page.type(selector, text);
  const value = await page.$eval(selector, (el) => el.value);
  check(value === text, `${selector} holds ${JSON.stringify(value)} after typing ${JSON.stringify(text)}`);
}

async function run(browser) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 750 });

  // Uncaught exceptions in the page fail the test; console errors are reported.
  const pageErrors = [];
  const consoleErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e.message || e)));
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });

  const response = await page.goto(opts.url, { waitUntil: "load", timeout: 30_000 });
  check(response && response.ok(), `GET ${opts.url} answered ${response && response.status()}`);

  if (opts["api-key"] !== undefined) {
    await typeInto(page, "#api-key", opts["api-key"]);
    await page.keyboard.press("Tab"); // "change" fires on blur and refetches the model
  }

  // #model-name gets data-status="ok" (and the id as text) once /v1/models answered.
  await page.waitForFunction(
    () => {
      const el = document.querySelector("#model-name");
      return el && el.dataset.status === "ok" && el.textContent.trim() !== "";
    },
    { timeout: 15_000 },
  ).catch(async () => {
    const [status, text] = await page.$eval("#model-name", (el) => [el.dataset.status, el.title || el.textContent]);
    throw new Failure(`#model-name not filled (status ${status}): ${text}`);
  });
  const model = await page.$eval("#model-name", (el) => el.textContent.trim());

  await typeInto(page, "#temperature", "0");
  await typeInto(page, "#max-tokens", opts["max-tokens"]);
  await page.type("#prompt", opts.prompt);

  // Record every value body[data-state] takes: a short reply may stream and finish
  // between two polls, so "streaming" is caught by an observer, not by polling.
  await page.evaluate(() => {
    window.__states = [];
    new MutationObserver(() => window.__states.push(document.body.dataset.state))
      .observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
  });

  const t0 = Date.now();
  await page.click("#send");
  await page.waitForFunction(
    () => window.__states.includes("streaming") && document.body.dataset.state === "idle",
    { timeout: REPLY_TIMEOUT_MS, polling: 50 },
  ).catch(async () => {
    const states = await page.evaluate(() => [window.__states, document.body.dataset.state]);
    throw new Failure(`no complete reply within ${REPLY_TIMEOUT_MS / 1000} s (states seen ${JSON.stringify(states[0])}, now ${states[1]})`);
  });
  const elapsedMs = Date.now() - t0;

  const result = await page.evaluate(() => ({
    users: [...document.querySelectorAll("#messages .message.user")].map((e) => e.textContent),
    replies: [...document.querySelectorAll("#messages .message.assistant")].map((e) => e.textContent),
    errors: [...document.querySelectorAll("#messages .message.error")].map((e) => e.textContent),
    stats: document.querySelector("#stats").textContent.trim(),
    states: window.__states,
  }));

  // Screenshot before the checks, so that a failure can be looked at too.
  if (opts.screenshot) await page.screenshot({ path: opts.screenshot });

  check(result.errors.length === 0, `the page shows an error: ${result.errors.join(" | ")}`);
  check(result.users.length === 1 && result.users[0] === opts.prompt,
    `expected one user message ${JSON.stringify(opts.prompt)}, got ${JSON.stringify(result.users)}`);
  check(result.replies.length === 1, `expected one assistant message, got ${result.replies.length}`);
  const reply = result.replies[0];
  check(reply.trim() !== "", "the assistant message is empty");
  if (opts["expect-text"] !== undefined) {
    check(reply.trim() === opts["expect-text"].trim(),
      `reply ${JSON.stringify(reply.trim())} differs from the expected ${JSON.stringify(opts["expect-text"].trim())}`);
  }
  check(/tokens\/s/.test(result.stats), `#stats does not mention tokens/s: ${JSON.stringify(result.stats)}`);
  check(pageErrors.length === 0, `uncaught errors in the page: ${pageErrors.join(" | ")}`);

  return {
    ok: true,
    model,
    reply,
    stats: result.stats,
    states: result.states,
    elapsed_ms: elapsedMs,
    console_errors: consoleErrors,
    screenshot: opts.screenshot ?? null,
  };
}

let browser;
let code = 1;
try {
  browser = await puppeteer.launch({
    executablePath,
    headless: true,
    // --no-sandbox: tests run as root in containers, where Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,750"],
  });
  const summary = await run(browser);
  console.log(JSON.stringify(summary));
  code = 0;
} catch (e) {
  console.error(`browser test failed: ${e instanceof Failure ? e.message : (e && e.stack) || e}`);
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
} finally {
  if (browser) await browser.close().catch(() => {});
}
process.exit(code);
