// When WebSocket is refused (as by a proxy that drops upgrades), the client falls back to
// SSE and then, if SSE is blocked too, to long-poll, and the application gets every event
// published before, during and after, in order, exactly once. Once WebSocket works again,
// the client returns to it, again without a loss or a repeat.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { blankPage, eventsAtLeast, follow, logged, publish, useBrowserAndServer } from "./harness.mjs";

/** Publishes `{n}` for n in from..=to, one after the other. */
async function publishRange(server, channel, from, to) {
  for (let n = from; n <= to; n++) await publish(server, channel, "tick", { n });
}

/** Refuses every WebSocket of the page: it opens, then closes at once without a frame. */
async function refuseWebSockets(page) {
  await page.routeWebSocket(/\/v1\/ws/, (ws) => ws.close({ code: 1008, reason: "blocked by proxy" }));
}

describe("fallback", () => {
  const up = useBrowserAndServer();

  test("WebSocket refused: falls back to SSE and loses nothing", { timeout: 60_000 }, async () => {
    const channel = "browser/fallback-sse";
    const page = await blankPage(up.browser, up.server);
    await refuseWebSockets(page);
    await publishRange(up.server, channel, 1, 3);
    // Subscribing does not wait for a transport: it starts after offset 0 wherever it ends up.
    const subscribed = follow(page, channel, { backoff: { initialMs: 100, maxMs: 1000 } }, { after: 0 });
    await publishRange(up.server, channel, 4, 6);
    await subscribed;
    const log = await logged(page, "fallback");
    const fallback = log.find((e) => e.type === "fallback");
    assert.equal(fallback.from, "websocket");
    assert.equal(fallback.to, "sse");
    await publishRange(up.server, channel, 7, 9);
    const events = await eventsAtLeast(page, 9);
    assert.deepEqual(events.map((e) => e.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.deepEqual(events.map((e) => e.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    const state = await page.evaluate(() => ({ transport: window.sy.transport, log: window.log }));
    assert.equal(state.transport, "sse");
    assert.deepEqual(
      state.log.filter((e) => e.type === "connected" || e.type === "fallback").map((e) => e.transport ?? `${e.from}->${e.to}`),
      ["websocket->sse", "sse"],
      "never counted as connected over the refused WebSocket",
    );
    // One more, live, to be sure nothing is repeated after the catch-up.
    await publish(up.server, channel, "tick", { n: 10 });
    const all = await eventsAtLeast(page, 10);
    assert.deepEqual(all.map((e) => e.offset), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    await page.context().close();
  });

  test("WebSocket unblocked later: the client returns to it and loses nothing", { timeout: 60_000 }, async () => {
    const channel = "browser/fallback-upgrade";
    const page = await blankPage(up.browser, up.server);
    // A proxy refusing upgrades until it is fixed; `sockets` counts the page's attempts.
    const proxy = { blocked: true, sockets: 0 };
    await page.routeWebSocket(/\/v1\/ws/, (ws) => {
      proxy.sockets += 1;
      if (proxy.blocked) ws.close({ code: 1008, reason: "blocked by proxy" });
      else ws.connectToServer();
    });
    await publishRange(up.server, channel, 1, 3);
    await follow(page, channel, { backoff: { initialMs: 100, maxMs: 1000 }, retryPreferredMs: 300 }, { after: 0 });
    await logged(page, "fallback");
    await eventsAtLeast(page, 3);
    // Two refused connects made the fallback; wait for two probes more, refused too.
    const deadline = Date.now() + 20_000;
    while (proxy.sockets < 4) {
      assert.ok(Date.now() < deadline, `only ${proxy.sockets} WebSocket attempts`);
      await page.waitForTimeout(50);
    }
    let state = await page.evaluate(() => ({ transport: window.sy.transport, log: window.log }));
    assert.equal(state.transport, "sse", "a refused probe leaves the client on SSE");
    assert.ok(!state.log.some((e) => e.type === "upgrade"), JSON.stringify(state.log));
    await publishRange(up.server, channel, 4, 5);

    proxy.blocked = false;
    const log = await logged(page, "upgrade");
    assert.deepEqual(log.filter((e) => e.type === "upgrade").map((e) => `${e.from}->${e.to}`), ["sse->websocket"]);
    await page.waitForFunction(() => window.sy.transport === "websocket" && window.sy.state === "connected", null, { timeout: 20_000 });
    await publishRange(up.server, channel, 6, 8);
    const events = await eventsAtLeast(page, 8);
    assert.deepEqual(events.map((e) => e.offset), [1, 2, 3, 4, 5, 6, 7, 8]);
    state = await page.evaluate(() => window.log.filter((e) => e.type === "connected").map((e) => e.transport));
    assert.deepEqual(state, ["sse", "websocket"]);
    await page.context().close();
  });

  test("WebSocket and SSE both blocked: ends on long-poll, in order", { timeout: 60_000 }, async () => {
    const channel = "browser/fallback-poll";
    const page = await blankPage(up.browser, up.server);
    await refuseWebSockets(page);
    await page.route(/\/v1\/sse/, (route) => route.abort("connectionrefused"));
    await publishRange(up.server, channel, 1, 2);
    const subscribed = follow(page, channel, { backoff: { initialMs: 100, maxMs: 1000 } }, { after: 0 });
    await publishRange(up.server, channel, 3, 4);
    await subscribed;
    await page.waitForFunction(() => window.sy.transport === "poll" && window.sy.state === "connected", null, { timeout: 20_000 });
    await publishRange(up.server, channel, 5, 6);
    const events = await eventsAtLeast(page, 6);
    assert.deepEqual(events.map((e) => e.offset), [1, 2, 3, 4, 5, 6]);
    const fallbacks = await page.evaluate(() => window.log.filter((e) => e.type === "fallback").map((e) => `${e.from}->${e.to}`));
    assert.deepEqual(fallbacks, ["websocket->sse", "sse->poll"]);
    await page.context().close();
  });
});
