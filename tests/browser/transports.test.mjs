// Each transport, forced alone, carries a published event to the page, exactly once; with
// API keys on, a job token follows its job on each of them.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { blankPage, call, eventsAtLeast, follow, publish, useBrowserAndServer } from "./harness.mjs";

const TRANSPORTS = ["websocket", "sse", "poll"];

describe("forced transports (open mode)", () => {
  const up = useBrowserAndServer();

  for (const transport of TRANSPORTS) {
    test(`${transport}: the page receives exactly the event published`, { timeout: 60_000 }, async () => {
      const page = await blankPage(up.browser, up.server);
      const channel = `browser/${transport}`;
      // From now: the subscription is ready once the server holds its position.
      await follow(page, channel, { transports: [transport] });
      const sent = await publish(up.server, channel, "greeting", { hello: transport, n: [1, 2.5, null] });
      const [event] = await eventsAtLeast(page, 1);
      assert.equal(event.channel, channel);
      assert.equal(event.type, "greeting");
      assert.deepEqual(event.data, { hello: transport, n: [1, 2.5, null] });
      assert.equal(event.offset, sent.offset);
      assert.equal(event.id, sent.id);
      assert.equal(event.cursor, sent.cursor);
      // A second event proves nothing else (no duplicate) came in between.
      await publish(up.server, channel, "bye", {});
      const events = await eventsAtLeast(page, 2);
      assert.deepEqual(events.map((e) => [e.offset, e.type]), [[1, "greeting"], [2, "bye"]]);
      const state = await page.evaluate(() => ({
        transport: window.sy.transport,
        state: window.sy.state,
        log: window.log,
        cursor: window.sub.cursor,
        offset: window.sub.offset,
      }));
      assert.equal(state.transport, transport);
      assert.equal(state.state, "connected");
      assert.equal(state.offset, 2);
      assert.ok(state.cursor, "the subscription exposes its cursor");
      assert.deepEqual(state.log.map((e) => [e.type, e.transport]), [["connected", transport]]);
      assert.deepEqual(page.errors, []);
      await page.context().close();
    });
  }
});

describe("job tokens with API keys on", () => {
  const KEY = "browser-test-key-0123456789";
  const auth = { authorization: `Bearer ${KEY}` };
  const up = useBrowserAndServer({ env: { SWITCHYARD_AUTH__API_KEYS: KEY } });

  for (const transport of TRANSPORTS) {
    test(`${transport}: a job token follows its job from the start`, { timeout: 60_000 }, async () => {
      const page = await blankPage(up.browser, up.server);
      const job = await call(up.server, "POST", "/v1/jobs", { query: transport }, auth);
      assert.equal(job.status, 202);
      const { channel, token } = job.body;
      const claim = await call(up.server, "POST", "/v1/jobs/claim", { wait_ms: 5000, lease_ms: 60_000 }, auth);
      assert.equal(claim.status, 200);
      const lease = claim.body.lease;
      // The token is a function, as an application that fetches tokens would pass it.
      await page.evaluate((token) => { window.token = token; }, token);
      await page.evaluate(async ({ channel, transport }) => {
        const { Switchyard } = await import("/v1/client.js");
        window.events = [];
        window.errors = [];
        window.sy = new Switchyard(location.origin, { transports: [transport], token: async () => window.token });
        window.sy.on("error", ({ error }) => window.errors.push(`${error.code}`));
        window.sub = window.sy.subscribe(channel, { after: 0 }, (e) => window.events.push(e));
        await window.sub.ready;
      }, { channel, transport });
      const id = job.body.id;
      await call(up.server, "POST", `/v1/jobs/${id}/progress`, { lease, data: { step: 1 } }, auth);
      await call(up.server, "POST", `/v1/jobs/${id}/complete`, { lease, result: { ok: transport } }, auth);
      const events = await eventsAtLeast(page, 4);
      assert.deepEqual(events.map((e) => e.type), ["job.queued", "job.started", "job.progress", "job.completed"]);
      assert.deepEqual(events.at(-1).data.result, { ok: transport });
      assert.deepEqual(await page.evaluate(() => window.errors), []);
      // Without a credential the same subscription is refused, on every transport.
      const refused = await page.evaluate(async ({ channel, transport }) => {
        const { Switchyard } = await import("/v1/client.js");
        const sy = new Switchyard(location.origin, { transports: [transport] });
        const error = new Promise((resolve) => sy.on("error", ({ error }) => resolve(error.code)));
        sy.subscribe(channel, { after: 0 }, () => {});
        const code = await error;
        sy.close();
        return code;
      }, { channel, transport });
      assert.equal(refused, "unauthorized");
      await page.context().close();
    });
  }
});
