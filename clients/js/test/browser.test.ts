/**
 * The demo page and the admin page in headless Chromium (Debian's
 * `chromium`, driven by playwright-core), against `sessiongate demo`.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BIN, freePort, REPO, until } from "./harness.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = join(REPO, "clients/js/test-results");
const ADMIN_TOKEN = "demo-admin-token";

let demo: ChildProcess;
let base: string;
let admin: string;
let profile: string;
let context: BrowserContext;

declare global {
  interface Window {
    demo: { session: import("../src/index.js").Session };
    demoReady?: boolean;
    clockOffset: number;
  }
}

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: make deps installs Debian's chromium`);
  const [p, a, h, w] = [await freePort(), await freePort(), await freePort(), await freePort()];
  base = `http://127.0.0.1:${p}`;
  admin = `http://127.0.0.1:${a}`;
  demo = spawn(
    BIN,
    [
      "demo",
      "--listen",
      `127.0.0.1:${p}`,
      "--admin",
      `127.0.0.1:${a}`,
      "--http-echo",
      `127.0.0.1:${h}`,
      "--ws-echo",
      `127.0.0.1:${w}`,
    ],
    { stdio: "ignore", env: { ...process.env, SESSIONGATE_LOG: "warn" } },
  );
  await until("the demo gate", async () => (await fetch(`${base}/`).catch(() => null))?.status === 200, 20_000);
  mkdirSync(ARTIFACTS, { recursive: true });
  profile = mkdtempSync(join(tmpdir(), "sg-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1100, height: 900 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
}, 60_000);

afterAll(async () => {
  await context?.close();
  demo?.kill("SIGTERM");
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function openDemo(): Promise<Page> {
  const page = await context.newPage();
  await page.goto(`${base}/`);
  await page.waitForFunction(() => window.demoReady === true);
  return page;
}

const statusOf = (page: Page) => page.locator("#status").textContent();

// Generous: this machine's cores are shared, and Chromium is slow to start work under load.
async function waitStatus(page: Page, want: string, timeout = 10_000): Promise<void> {
  try {
    await page.waitForFunction((w) => document.getElementById("status")?.textContent === w, want, { timeout });
  } catch (err) {
    const shown = await page.evaluate(() => [
      document.getElementById("status")?.textContent,
      document.getElementById("error")?.textContent,
    ]);
    throw new Error(`status never became ${want} on ${page.url()}: shows ${JSON.stringify(shown)} (${String(err)})`);
  }
}

async function login(page: Page): Promise<string> {
  await page.click("#login");
  await waitStatus(page, "active");
  return page.evaluate(() => window.demo.session.id as string);
}

describe("demo page", () => {
  it("logs in, shows info() and the sessions, chats, and shows `ended` at once when a second tab logs out", async () => {
    const first = await openDemo();
    expect(await statusOf(first)).toBe("none");
    const sid = await login(first);
    await first.waitForFunction(() => document.getElementById("info")?.textContent?.includes('"name": "Demo User"'));
    await first.waitForSelector(`#sessions tr[data-id="${sid}"] .status.active`);
    await first.waitForFunction(() => window.demo.session.gateway.chat?.state === "open");
    await first.fill("#chat-input", "hello gate");
    await first.click("#chat-send");
    await first.waitForFunction(() => document.getElementById("chat-log")?.textContent?.includes("echo: hello gate"));
    await first.screenshot({ path: join(ARTIFACTS, "demo.png"), fullPage: true });

    const second = await openDemo();
    await waitStatus(second, "active");
    expect(await second.evaluate(() => window.demo.session.id)).toBe(sid);
    await second.click("#logout");
    await waitStatus(second, "ended");
    // The first tab's socket is closed and the page says so, well within
    // the time a user would call "at once" even on a loaded machine.
    await waitStatus(first, "ended", 5000);
    await first.waitForFunction(() => window.demo.session.gateway.chat?.state === "closed");
    expect(await first.evaluate(() => window.demo.session.gateway.chat?.ended)).toBe("ended");
    await first.waitForFunction(() => document.getElementById("chat-log")?.textContent?.includes("session ended"));
    await first.close();
    await second.close();
  });

  it("refreshes once across two tabs when the ticket is due in both", async () => {
    const first = await openDemo();
    await login(first);
    const second = await openDemo();
    await waitStatus(second, "active");
    const refreshes: string[] = [];
    context.on("request", (r) => {
      if (r.url().endsWith("/_session/refresh")) refreshes.push(r.url());
    });
    // Let the session age a little: the refreshed ticket must then land past
    // refreshBefore of the moved clocks, so the second tab has no reason to refresh again.
    await first.waitForFunction(() => Date.now() - (window.demo.session.createdAt?.getTime() ?? 0) > 1000);
    const due = () => {
      const exp = window.demo.session.expireAt?.getTime() ?? 0;
      window.clockOffset = exp - 60_000 - Date.now() + 1;
    };
    await first.evaluate(due);
    await second.evaluate(due);
    const calls = () =>
      Promise.all([1, 2, 3, 4, 5].map((i) => window.demo.session.controller.echo?.get(`/t${i}`))).then((r) => r.length);
    const [a, b] = await Promise.all([first.evaluate(calls), second.evaluate(calls)]);
    expect([a, b]).toEqual([5, 5]);
    expect(refreshes).toHaveLength(1);
    // Both tabs know the new expiry.
    const e1 = await first.evaluate(() => window.demo.session.expireAt?.getTime());
    await second.waitForFunction((e) => window.demo.session.expireAt?.getTime() === e, e1);
    context.removeAllListeners("request");
    await first.click("#logout");
    await waitStatus(first, "ended");
    await first.close();
    await second.close();
  });
});

describe("admin page", () => {
  it("lists a user's sessions and revokes one while the demo page watches, live from /admin/events", async () => {
    const watcher = await openDemo();
    const sid = await login(watcher);
    const page = await context.newPage();
    await page.goto(`${admin}/`);
    await page.fill("#token", ADMIN_TOKEN);
    await page.click("#connect");
    expect(await page.inputValue("#token")).toBe("");
    await page.waitForFunction(() => document.getElementById("conn")?.textContent === "live");
    await page.fill("#user", "u-demo");
    await page.click("#load");
    await page.waitForSelector(`#sessions tr[data-id="${sid}"] .status.active`);
    expect(await page.locator(`#sessions tr[data-id="${sid}"]`).textContent()).toContain("device=browser");
    await page.click(`#sessions tr[data-id="${sid}"] button.revoke`);
    await waitStatus(watcher, "revoked");
    expect(await watcher.evaluate(() => window.demo.session.gateway.chat?.ended)).toBe("revoked");
    await page.waitForSelector(`#sessions tr[data-id="${sid}"] .status.revoked`);
    await page.waitForFunction(() => document.getElementById("events")?.textContent?.includes("revoked"));
    await page.screenshot({ path: join(ARTIFACTS, "admin.png"), fullPage: true });
    // Revoke all: a fresh login in the watching tab, then the user's every session.
    await watcher.waitForFunction(() => window.demo.session.status === "revoked");
    const again = await login(watcher);
    await page.click("#load");
    await page.waitForSelector(`#sessions tr[data-id="${again}"] .status.active`);
    await page.click("#revoke-all");
    await waitStatus(watcher, "revoked");
    await page.waitForSelector(`#sessions tr[data-id="${again}"] .status.revoked`);
    expect(await page.locator("#sessions .status.active").count()).toBe(0);
    // The token was never written anywhere the browser keeps.
    expect(await page.evaluate(() => [localStorage.length, sessionStorage.length, document.cookie])).toEqual([
      0,
      0,
      "",
    ]);
    await page.close();
    await watcher.close();
  });
});
