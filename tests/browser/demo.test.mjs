// The PollToPush demo page end to end: with the built-in demo worker on, submitting the
// query on /demo shows per-country progress and the result, on each transport. The
// finished page is saved to target/browser/demo.png.

import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { describe, test } from "node:test";
import { ROOT, WAIT_MS, useBrowserAndServer } from "./harness.mjs";

const COUNTRIES = ["Ireland", "France", "Spain", "Germany"];
const SCREENSHOT = path.join(ROOT, "target/browser/demo.png");

describe("the /demo page", () => {
  const up = useBrowserAndServer({ env: { SWITCHYARD_DEMO__WORKER: "true", SWITCHYARD_DEMO__DELAY_MS: "150" } });

  for (const transport of ["websocket", "sse", "poll"]) {
    test(`${transport}: the query runs end to end`, { timeout: 60_000 }, async () => {
      const context = await up.browser.newContext({ viewport: { width: 1000, height: 1000 } });
      const page = await context.newPage();
      const errors = [];
      page.on("pageerror", (err) => errors.push(String(err)));
      await page.goto(`${up.server.url}/demo`);
      await page.selectOption("#transport", transport);
      await page.click("#run");
      // Progress arrives country by country, before the result.
      await page.waitForFunction(() => document.body.dataset.progress === "1/4", null, { timeout: WAIT_MS });
      await page.waitForFunction(() => document.body.dataset.jobStatus === "succeeded", null, { timeout: WAIT_MS });
      assert.equal(await page.getAttribute("body", "data-progress"), "4/4");
      assert.equal(await page.getAttribute("body", "data-transport"), transport);
      const done = await page.$$eval(".country.done .name", (els) => els.map((e) => e.textContent));
      assert.deepEqual(done, COUNTRIES);
      const rows = await page.$$eval("#result tbody tr", (trs) =>
        trs.map((tr) => [...tr.cells].map((td) => td.textContent)));
      assert.deepEqual(rows.map((r) => r[0]), COUNTRIES);
      for (const [, count] of rows) assert.match(count, /^[\d,]+$/);
      const log = await page.textContent("#log");
      assert.match(log, new RegExp(`connected over ${transport}`));
      for (const type of ["job.queued", "job.started", "job.progress", "job.completed"]) {
        assert.ok(log.includes(`← ${type}`), `the log shows ${type}:\n${log}`);
      }
      assert.deepEqual(errors, []);
      if (transport === "websocket") {
        await mkdir(path.dirname(SCREENSHOT), { recursive: true });
        await page.screenshot({ path: SCREENSHOT, fullPage: true, animations: "disabled" });
      }
      await context.close();
    });
  }

  test("the client and the page are served with the right headers", async () => {
    const js = await fetch(`${up.server.url}/v1/client.js`);
    assert.equal(js.status, 200);
    assert.equal(js.headers.get("content-type"), "text/javascript; charset=utf-8");
    assert.equal(js.headers.get("cache-control"), "no-cache");
    assert.match(await js.text(), /export class Switchyard/);
    const html = await fetch(`${up.server.url}/demo`);
    assert.equal(html.status, 200);
    assert.equal(html.headers.get("content-type"), "text/html; charset=utf-8");
    assert.match(await html.text(), /PollToPush/);
  });
});
