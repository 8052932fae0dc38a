// Namespaces in the browser, through /v1/client.js over Chromium's own WebSocket: presence
// (sy.presence, onJoin and onLeave) and client publishes (sy.publish) between two pages.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { WAIT_MS, blankPage, useBrowserAndServer } from "./harness.mjs";

const NAMESPACES =
  '[{name="rooms",patterns=["rooms/*"],presence=true,join_leave=true,client_publish=true}]';

/** Waits until `window.presenceLog` (the page's join/leave callbacks) has `n` entries. */
async function presenceLogAtLeast(page, n) {
  await page.waitForFunction((n) => window.presenceLog.length >= n, n, { timeout: WAIT_MS });
  return page.evaluate(() => window.presenceLog);
}

/** Follows `channel` over the WebSocket, logging joins and leaves in `window.presenceLog`. */
async function enter(up, channel) {
  const page = await blankPage(up.browser, up.server);
  await page.evaluate(() => { window.presenceLog = []; });
  await page.evaluate(async (channel) => {
    const { Switchyard } = await import("/v1/client.js");
    window.events = [];
    window.sy = new Switchyard(location.origin, { transports: ["websocket"] });
    window.sub = window.sy.subscribe(channel, {
      onJoin: (m) => window.presenceLog.push(["join", m.client_id]),
      onLeave: (m) => window.presenceLog.push(["leave", m.client_id]),
    }, (e) => window.events.push(e));
    await window.sub.ready;
  }, channel);
  return page;
}

describe("presence and client publishes (open mode)", () => {
  const up = useBrowserAndServer({ env: { SWITCHYARD_NAMESPACES: NAMESPACES } });

  test("pages see each other join, list each other, publish to each other, and leave", { timeout: 60_000 }, async () => {
    const channel = "rooms/browser";
    const ann = await enter(up, channel);
    const [[kind, annId]] = await presenceLogAtLeast(ann, 1);
    assert.equal(kind, "join", "a member's own join comes first");
    const bob = await enter(up, channel);
    const annLog = await presenceLogAtLeast(ann, 2);
    const bobId = annLog[1][1];
    assert.deepEqual(annLog[1], ["join", bobId]);
    assert.notEqual(bobId, annId);

    const listed = await bob.evaluate((c) => window.sy.presence(c), channel);
    assert.deepEqual(listed.map((m) => m.client_id).sort(), [annId, bobId].sort());

    const sent = await bob.evaluate((c) => window.sy.publish(c, { text: "hi" }, { type: "said" }), channel);
    assert.equal(sent.offset, 1);
    await ann.waitForFunction(() => window.events.length >= 1, null, { timeout: WAIT_MS });
    const [event] = await ann.evaluate(() => window.events);
    assert.deepEqual([event.type, event.data, event.offset, event.cursor], ["said", { text: "hi" }, 1, sent.cursor]);
    // Presence events moved no cursor: the subscription's position is the event's.
    assert.equal(await ann.evaluate(() => window.sub.offset), 1);

    // A refused publish rejects with the gateway's code.
    const refused = await bob.evaluate(async () => {
      try {
        await window.sy.publish("elsewhere", 1);
        return null;
      } catch (e) {
        return e.code;
      }
    });
    assert.equal(refused, "forbidden");

    await bob.context().close();
    const after = await presenceLogAtLeast(ann, 3);
    assert.deepEqual(after[2], ["leave", bobId]);
    const left = await ann.evaluate((c) => window.sy.presence(c), channel);
    assert.deepEqual(left.map((m) => m.client_id), [annId]);
    assert.deepEqual(ann.errors, []);
    await ann.context().close();
  });
});
