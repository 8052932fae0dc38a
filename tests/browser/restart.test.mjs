// The server crashes and comes back on the same port and data directory while a page
// follows a job (`jobs/{id}` is durable): the page reconnects with its cursor and ends with
// every event of the job exactly once, in order, without a reset.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { WAIT_MS, blankPage, call, eventsAtLeast, startServer, useBrowserAndServer } from "./harness.mjs";

describe("server restart", () => {
  // Each test starts (and restarts) its own server.
  const up = useBrowserAndServer(false);

  for (const transport of ["websocket", "sse", "poll"]) {
    test(`${transport}: the page resumes the job without duplicates`, { timeout: 90_000 }, async () => {
      let server = await startServer();
      const { port, dataDir } = server;
      try {
        const job = await call(server, "POST", "/v1/jobs", { query: "restart" });
        assert.equal(job.status, 202);
        const { id, channel, token } = job.body;
        const claim = await call(server, "POST", "/v1/jobs/claim", { wait_ms: 5000, lease_ms: 120_000 });
        assert.equal(claim.status, 200);
        const lease = claim.body.lease;
        const progress = (step) => call(server, "POST", `/v1/jobs/${id}/progress`, { lease, data: { step } });

        const page = await blankPage(up.browser, server);
        await page.evaluate(async ({ channel, token, transport }) => {
          const { Switchyard } = await import("/v1/client.js");
          window.events = [];
          window.log = [];
          window.sy = new Switchyard(location.origin, {
            token,
            transports: [transport],
            backoff: { initialMs: 100, maxMs: 1000 },
          });
          for (const type of ["connected", "disconnected", "fallback", "reset"]) {
            window.sy.on(type, (detail) => window.log.push({ type, ...detail }));
          }
          window.sub = window.sy.subscribe(channel, { after: 0 }, (e) => window.events.push(e));
          await window.sub.ready;
        }, { channel, token, transport });
        assert.equal((await progress(1)).status, 200);
        assert.equal((await progress(2)).status, 200);
        await eventsAtLeast(page, 4);

        // A crash: no goodbye to the page.
        await server.stop("SIGKILL");
        await page.waitForFunction(() => window.log.some((e) => e.type === "disconnected"), null, { timeout: WAIT_MS });
        server = await startServer({ port, dataDir });
        assert.equal((await progress(3)).status, 200, "the lease survived the restart");
        assert.equal((await progress(4)).status, 200);
        const done = await call(server, "POST", `/v1/jobs/${id}/complete`, { lease, result: { rows: 4 } });
        assert.equal(done.status, 200);

        const events = await eventsAtLeast(page, 7);
        assert.deepEqual(events.map((e) => e.offset), [1, 2, 3, 4, 5, 6, 7]);
        assert.deepEqual(events.map((e) => e.type), [
          "job.queued", "job.started", "job.progress", "job.progress", "job.progress", "job.progress", "job.completed",
        ]);
        assert.deepEqual(events.filter((e) => e.type === "job.progress").map((e) => e.data.step), [1, 2, 3, 4]);
        const log = await page.evaluate(() => window.log);
        assert.ok(!log.some((e) => e.type === "reset"), `no reset: ${JSON.stringify(log)}`);
        assert.ok(!log.some((e) => e.type === "fallback"), `no fallback: ${JSON.stringify(log)}`);
        assert.ok(log.filter((e) => e.type === "connected").length >= 2, "connected again after the restart");
        // Chromium logs each refused WebSocket handshake as a console error: during the
        // outage the client's retries are refused, by design. Anything else is a failure.
        const outage = /^WebSocket connection to '.*' failed: .*ERR_CONNECTION_REFUSED$/;
        assert.deepEqual(page.errors.filter((e) => !outage.test(e)), []);
        await page.context().close();
      } finally {
        await server.cleanup();
      }
    });
  }
});
