// The demo chat page in a real browser: headless Chromium (Debian's
// /usr/bin/chromium) driven by playwright-core. Two pages log in as two
// users; one creates a room and invites the other, the other accepts, and a
// message typed in one page appears in the other (both ways).
//
// Skips when Chromium or playwright-core is missing: tests/js/ensure-chromium.sh
// installs Chromium (apt) and `npm ci --prefix tests/js` installs
// playwright-core; tests/test_js.py does both before running these tests.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { RoomApi } from "../../homeserver/web/room-api.js";
import { startServer, uniqueName } from "./harness.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--no-first-run",
];

let playwright = null;
try {
  playwright = await import("playwright-core");
} catch {
  playwright = null;
}
const skip = !existsSync(CHROMIUM)
  ? `${CHROMIUM} is missing (run tests/js/ensure-chromium.sh)`
  : !playwright
    ? "playwright-core is not installed (npm ci --prefix tests/js)"
    : false;

let server;
let browser;

before(async () => {
  if (skip) return;
  server = await startServer();
  browser = await playwright.chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

async function openPage(label, problems) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  page.on("pageerror", (err) => problems.push(`${label} page error: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`${label} console: ${msg.text()}`);
  });
  // A short long-poll, so that the server stops quickly after the test.
  await page.goto(`${server.baseUrl}/?timeout=2000`);
  return page;
}

test("two users chat through the demo page in Chromium", { skip }, async (t) => {
  const problems = [];
  const aliceName = uniqueName("browsera");
  const bobName = uniqueName("browserb");
  // Bob's account exists beforehand (he logs in); Alice registers in the page.
  const bob = await RoomApi.register(server.baseUrl, bobName, "bob-pw");

  const pageA = await openPage("alice", problems);
  const pageB = await openPage("bob", problems);
  try {
    await pageA.fill("#login-user", aliceName);
    await pageA.fill("#login-password", "alice-pw");
    await pageA.click("#register-btn");
    await pageA.waitForSelector("body[data-ready=true]");
    const aliceId = (await pageA.textContent("#me")).trim();
    assert.match(aliceId, new RegExp(`^@${aliceName}:`));

    await pageB.fill("#login-user", bobName);
    await pageB.fill("#login-password", "bob-pw");
    await pageB.click("#login-btn");
    await pageB.waitForSelector("body[data-ready=true]");
    assert.equal((await pageB.textContent("#me")).trim(), bob.userId);

    // Alice creates a room and invites Bob.
    await pageA.fill("#create-name", "Browser room");
    await pageA.click("#create-btn");
    await pageA.waitForFunction(
      () => document.getElementById("room-title").textContent === "Browser room",
    );
    await pageA.fill("#invite-user", bob.userId);
    await pageA.click("#invite-btn");
    await pageA.waitForFunction((id) => document.getElementById("status").textContent === `Invited ${id}`, bob.userId);

    // Bob sees the invite arrive live and accepts it.
    const accept = pageB.locator("#invite-list li", { hasText: "Browser room" }).locator("button.accept");
    await accept.waitFor();
    assert.match(await pageB.textContent("#invite-list"), new RegExp(aliceId.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")));
    await accept.click();
    await pageB.waitForFunction(
      () => document.getElementById("room-title").textContent === "Browser room",
    );
    await pageB.locator("#room-list li", { hasText: "Browser room" }).waitFor();

    // A message typed in Alice's page appears in Bob's, and back.
    await pageA.fill("#message-input", "Hello Bob, from the browser");
    await pageA.press("#message-input", "Enter");
    const atBob = pageB.locator("#messages .msg", { hasText: "Hello Bob, from the browser" });
    await atBob.waitFor();
    assert.equal(await atBob.getAttribute("data-sender"), aliceId);

    await pageB.fill("#message-input", "Hi Alice!");
    await pageB.click("#send-btn");
    const atAlice = pageA.locator("#messages .msg", { hasText: "Hi Alice!" });
    await atAlice.waitFor();
    assert.equal(await atAlice.getAttribute("data-sender"), bob.userId);

    // Both pages show the conversation in the same order.
    const order = (page) => page.$$eval("#messages .msg .body", (els) => els.map((e) => e.textContent));
    assert.deepEqual(await order(pageA), ["Hello Bob, from the browser", "Hi Alice!"]);
    assert.deepEqual(await order(pageB), ["Hello Bob, from the browser", "Hi Alice!"]);

    assert.deepEqual(problems, []);
    const shot = join(tmpdir(), "homeserver-demo-chat.png");
    await pageB.screenshot({ path: shot });
    t.diagnostic(`screenshot: ${shot}`);
  } catch (err) {
    const shot = join(tmpdir(), "homeserver-demo-chat-failure.png");
    await pageB.screenshot({ path: shot }).catch(() => {});
    const statusA = await pageA.textContent("#status").catch(() => "?");
    const statusB = await pageB.textContent("#status").catch(() => "?");
    err.message += `\nalice status: ${statusA}\nbob status: ${statusB}\nproblems: ${problems.join("; ")}\nscreenshot: ${shot}`;
    throw err;
  }
});
