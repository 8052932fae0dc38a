// Shared by the browser tests: starts the real server binary, launches Debian's Chromium
// through playwright-core, opens a page on the server's origin, and talks HTTP to the
// server. Every wait is on a condition with a timeout; none is a fixed sleep.

import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before } from "node:test";
import { chromium } from "playwright-core";

/** The repository root. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
/** The server binary (the Rust test passes the one cargo built). */
export const BIN = process.env.SWITCHYARD_BIN || path.join(ROOT, "target/debug/switchyard");
/** Debian's chromium; never a browser that playwright downloads. */
export const CHROMIUM = "/usr/bin/chromium";
/** Longest a single wait may take. */
export const WAIT_MS = 20_000;

/** Launches headless Chromium. */
export function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"], headless: true });
}

/**
 * Starts the server binary on a loopback port (0: any free one) in `dataDir` (default: a new
 * temporary directory). Per-address limits are off: every request comes from 127.0.0.1.
 */
export async function startServer({ env = {}, port = 0, dataDir } = {}) {
  const ownDir = !dataDir;
  dataDir ??= await mkdtemp(path.join(tmpdir(), "switchyard-browser-"));
  // The server reads every SWITCHYARD_* variable as configuration: pass only ours.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SWITCHYARD_")));
  const child = spawn(BIN, ["--listen", `127.0.0.1:${port}`, "--data-dir", dataDir], {
    env: {
      ...inherited,
      RUST_LOG: "info",
      NO_COLOR: "1",
      SWITCHYARD_LIMITS__REQUESTS_PER_SEC_PER_IP: "0",
      SWITCHYARD_LIMITS__MAX_CONNECTIONS_PER_IP: "0",
      SWITCHYARD_SHUTDOWN_GRACE_SECS: "2",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start within ${WAIT_MS} ms:\n${log}`)), WAIT_MS);
    const read = (chunk) => {
      log += chunk;
      const found = log.replace(/\x1b\[[0-9;]*m/g, "").match(/listen=(127\.0\.0\.1:\d+)/);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    };
    child.stdout.on("data", read);
    child.stderr.on("data", read);
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the server exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
  return {
    url: `http://${addr}`,
    port: Number(addr.split(":")[1]),
    dataDir,
    log: () => log,
    /** Stops the process (SIGKILL: a crash; SIGTERM: a graceful shutdown) and waits for it. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
    /** Stops it and removes its data directory (if this harness made it). */
    async cleanup() {
      await this.stop("SIGKILL");
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Calls the server: JSON in, `{status, body}` out. */
export async function call(server, method, path, body, headers = {}) {
  const res = await fetch(server.url + path, {
    method,
    headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null };
}

/** Publishes `{type, data}` on `channel`; returns the 201 body. */
export async function publish(server, channel, type, data, headers) {
  const { status, body } = await call(server, "POST", `/v1/channels/${channel}/events`, { type, data }, headers);
  if (status !== 201) throw new Error(`publish answered ${status}: ${JSON.stringify(body)}`);
  return body;
}

/**
 * A page on the server's origin, so it loads /v1/client.js same-origin, as an application
 * served beside the gateway would. It is `/healthz` (any page the server itself serves will
 * do): Chromium's local network access checks refuse a WebSocket to a loopback address
 * from a page that did not come from one, such as a page the test would fulfill itself.
 */
export async function blankPage(browser, server) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (err) => errors.push(String(err)));
  // (Not "Failed to load resource": that is the favicon the server does not have.)
  page.on("console", (msg) => {
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) errors.push(msg.text());
  });
  page.errors = errors;
  await page.goto(`${server.url}/healthz`);
  return page;
}

/**
 * In the page: imports the client, creates `window.sy` with `options`, records its client
 * events in `window.log` and subscribes to `channel` (events in `window.events`). Resolves
 * once the subscription is ready.
 */
export async function follow(page, channel, options = {}, subscribeOptions = {}) {
  await page.evaluate(async ({ channel, options, subscribeOptions }) => {
    const { Switchyard } = await import("/v1/client.js");
    window.events = [];
    window.log = [];
    const sy = new Switchyard(location.origin, options);
    for (const type of ["connected", "disconnected", "fallback", "upgrade", "reset", "error"]) {
      sy.on(type, (detail) => window.log.push({
        type,
        ...detail,
        error: detail.error ? `${detail.error.code}: ${detail.error.message}` : undefined,
      }));
    }
    window.sy = sy;
    window.sub = sy.subscribe(channel, subscribeOptions, (event) => window.events.push(event));
    await window.sub.ready;
  }, { channel, options, subscribeOptions });
}

/** Waits until the page holds at least `n` events; returns them all. */
export async function eventsAtLeast(page, n) {
  await page.waitForFunction((n) => window.events.length >= n, n, { timeout: WAIT_MS });
  return page.evaluate(() => window.events);
}

/** Waits until the page's client logged an event of `type`; returns the log. */
export async function logged(page, type) {
  await page.waitForFunction((type) => window.log.some((e) => e.type === type), type, { timeout: WAIT_MS });
  return page.evaluate(() => window.log);
}

/**
 * For the enclosing `describe`: launches a browser and, unless `server` is false, starts a
 * server with `server` as its options, before the tests; closes both after them. Returns
 * an object whose `browser` and `server` are set once they are up.
 */
export function useBrowserAndServer(server = {}) {
  const up = {};
  before(async () => {
    [up.browser, up.server] = await Promise.all([launch(), server ? startServer(server) : null]);
  });
  after(async () => {
    await Promise.all([up.browser?.close(), up.server?.cleanup()]);
  });
  return up;
}
