// End-to-end tests of the web client: the real server, real Chromium, real WebSockets.
// Run by scripts/test.sh (`node --test` in this directory, CONFAB_BIN set).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  cleanup, eventually, freePort, freshDir, launchBrowser, openDirect, openFromList, person,
  registerAs, send, shownTexts, sleep, startServer, tickOf, uniqueName, unreadOf, waitOnline,
  waitTexts, waitTick, WAIT_MS,
} from "./harness.mjs";

let browser;
before(async () => {
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});

async function postJson(base, path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(base + path, { method: "POST", headers, body: JSON.stringify(body) });
  const answer = await response.json();
  assert.ok(response.ok, `${path}: ${response.status} ${JSON.stringify(answer)}`);
  return answer;
}

/** A fresh server on its own port and data dir for one test. */
async function withServer(body) {
  const dir = freshDir();
  const port = await freePort();
  let server = await startServer({ port, dir });
  const restart = async () => {
    await server.kill();
    server = await startServer({ port, dir });
    return server;
  };
  try {
    await body(server, restart);
  } finally {
    await server.kill();
    cleanup(dir);
  }
}

describe("web client", () => {
  test("two people chat both ways; ticks go sent → delivered → read; typing and presence show", async () => {
    await withServer(async (server) => {
      const [aliceName, bobName] = [uniqueName("alice"), uniqueName("bob")];
      const alice = await person(browser, server.url);
      const bob = await person(browser, server.url);
      await registerAs(alice.page, aliceName);
      await registerAs(bob.page, bobName);
      // Bob is logged out while Alice writes: her message is durable ("sent"), no
      // device of his has it yet.
      await bob.page.click("#logout");
      await openDirect(alice.page, bobName);
      await send(alice.page, "hi bob");
      await waitTick(alice.page, "hi bob", "sent");
      await sleep(500);
      assert.equal(await tickOf(alice.page, "hi bob"), "sent", "nobody has received it yet");
      assert.match(
        await alice.page.textContent("#conversation-status"),
        /^last seen \d\d:\d\d/,
        "bob logged out: offline, with the time he was last seen",
      );

      // Bob logs in: his device catches up, says "delivered"; he has not opened it.
      await bob.page.fill("#login-username", bobName);
      await bob.page.fill("#login-password", "correct horse battery");
      await bob.page.click("#login-button");
      await waitOnline(bob.page);
      await waitTick(alice.page, "hi bob", "delivered");
      await eventually(`bob's unread badge`, () => unreadOf(bob.page, aliceName), (u) => u === "1");
      await eventually(
        "bob online in alice's header",
        () => alice.page.textContent("#conversation-status"),
        (s) => s === "online",
      );

      // He opens it: read.
      await openFromList(bob.page, aliceName);
      await waitTexts(bob.page, ["hi bob"]);
      await waitTick(alice.page, "hi bob", "read");
      assert.equal(await unreadOf(bob.page, aliceName), "", "read: no badge");

      // And back: Alice has the conversation open, so Bob's reply goes straight to read.
      await bob.page.fill("#composer-text", "typing something");
      await bob.page.type("#composer-text", "…");
      await eventually(
        "alice sees bob typing",
        () => alice.page.textContent("#conversation-status"),
        (s) => s === `${bobName} is typing…`,
      );
      await bob.page.fill("#composer-text", "");
      await send(bob.page, "hello alice");
      await waitTexts(alice.page, ["hi bob", "hello alice"]);
      await waitTick(bob.page, "hello alice", "read");
      await eventually(
        "typing ends with the message",
        () => alice.page.textContent("#conversation-status"),
        (s) => s === "online",
      );

      // A few more each way keep their order on both sides.
      for (let i = 1; i <= 3; i++) {
        await send(alice.page, `a${i}`);
        await send(bob.page, `b${i}`);
      }
      const texts = await eventually(
        "six more messages at alice",
        () => shownTexts(alice.page),
        (t) => t.length === 8,
      );
      assert.deepEqual(await eventually("bob's view", () => shownTexts(bob.page), (t) => t.length === 8), texts);
      assert.deepEqual(texts.filter((t) => t.startsWith("a")), ["a1", "a2", "a3"]);
      assert.deepEqual(texts.filter((t) => t.startsWith("b")), ["b1", "b2", "b3"]);

      await alice.page.screenshot({ path: process.env.CONFAB_SCREENSHOT || "/tmp/confab-web-chat.png" });
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      await alice.context.close();
      await bob.context.close();
    });
  });

  test("an offline user comes back to the messages in order; a reload keeps the history", async () => {
    await withServer(async (server) => {
      const [aliceName, bobName] = [uniqueName("alice"), uniqueName("bob")];
      const alice = await person(browser, server.url);
      let bob = await person(browser, server.url);
      await registerAs(alice.page, aliceName);
      await registerAs(bob.page, bobName);
      await openDirect(bob.page, aliceName);
      await send(bob.page, "before");
      await waitTick(bob.page, "before", "delivered");

      // Bob closes his browser (his device and its cursors live on in its storage).
      const saved = await bob.context.storageState();
      await bob.context.close();
      await openFromList(alice.page, bobName);
      await waitTexts(alice.page, ["before"]);
      await eventually(
        "bob offline with a last-seen time",
        () => alice.page.textContent("#conversation-status"),
        (s) => s.startsWith("last seen "),
      );
      for (const text of ["one", "two", "three", "four"]) await send(alice.page, text);
      await waitTick(alice.page, "four", "sent");
      assert.equal(await tickOf(alice.page, "one"), "sent");

      // He comes back: same device, catch-up, the messages in order.
      bob = await person(browser, server.url, saved);
      await waitOnline(bob.page);
      await eventually("4 unread at bob", () => unreadOf(bob.page, aliceName), (u) => u === "4");
      await openFromList(bob.page, aliceName);
      await waitTexts(bob.page, ["before", "one", "two", "three", "four"]);
      await waitTick(alice.page, "four", "read");

      // Reloads keep everything, on both sides.
      await bob.page.reload();
      await waitOnline(bob.page);
      await waitTexts(bob.page, ["before", "one", "two", "three", "four"]);
      await alice.page.reload();
      await waitOnline(alice.page);
      await openFromList(alice.page, bobName);
      await waitTexts(alice.page, ["before", "one", "two", "three", "four"]);
      await waitTick(alice.page, "four", "read"); // receipts come back with the catch-up
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      await alice.context.close();
      await bob.context.close();
    });
  });

  test("a dropped connection reconnects by itself, retries what was typed, and catches up", async () => {
    await withServer(async (server, restart) => {
      const [aliceName, bobName] = [uniqueName("alice"), uniqueName("bob")];
      const alice = await person(browser, server.url);
      const bob = await person(browser, server.url);
      await registerAs(alice.page, aliceName);
      await registerAs(bob.page, bobName);
      await openDirect(alice.page, bobName);
      await send(alice.page, "acked before the crash");
      await waitTick(alice.page, "acked before the crash", "delivered");

      // The server dies (SIGKILL): both pages see the drop.
      await server.kill();
      await alice.page.waitForSelector('#connection[data-state="offline"]', { timeout: WAIT_MS });
      await send(alice.page, "typed while down");
      const pending = alice.page.locator("#message-list li.message.pending", { hasText: "typed while down" });
      await pending.waitFor({ timeout: WAIT_MS });
      assert.equal(await pending.locator(".tick").getAttribute("data-tick"), "pending");

      // It comes back on the same address: the pages reconnect, the outbox is sent once.
      await restart();
      await waitOnline(alice.page);
      await waitOnline(bob.page);
      await waitTick(alice.page, "typed while down", "delivered");
      await openFromList(bob.page, aliceName);
      await waitTexts(bob.page, ["acked before the crash", "typed while down"]);
      await waitTexts(alice.page, ["acked before the crash", "typed while down"]);
      await waitTick(alice.page, "typed while down", "read");
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      await alice.context.close();
      await bob.context.close();
    });
  });

  test("history scrolls back page by page, in order", async () => {
    await withServer(async (server) => {
      const [aliceName, bobName] = [uniqueName("alice"), uniqueName("bob")];
      const alice = await person(browser, server.url);
      await registerAs(alice.page, aliceName);
      const bob = await person(browser, server.url);
      await registerAs(bob.page, bobName);
      await openDirect(alice.page, bobName);
      await send(alice.page, "m1");
      await waitTick(alice.page, "m1", "delivered");
      // 119 more from Alice's second device, over the HTTP API: three pages of history.
      const login = await postJson(server.url, "/v1/login", {
        username: aliceName,
        password: "correct horse battery",
      });
      const conversation = await alice.page.evaluate(() => sessionStorage.getItem("confab.open"));
      for (let i = 2; i <= 120; i++) {
        await postJson(server.url, "/v1/messages", {
          conversation_id: conversation,
          idempotency_key: (i.toString(16).padStart(32, "0")),
          body: Buffer.from(`m${i}`).toString("base64"),
        }, login.access_token);
      }
      const all = Array.from({ length: 120 }, (_, i) => `m${i + 1}`);
      await bob.page.close();
      const reader = await bob.context.newPage();
      await reader.goto(server.url);
      await waitOnline(reader);
      await openFromList(reader, aliceName);
      await waitTexts(reader, all.slice(-50));
      // The button loads a page; so does scrolling to the top (as a reader would).
      await reader.locator("#older").dispatchEvent("click");
      await waitTexts(reader, all.slice(-100));
      await reader.evaluate(() => {
        document.getElementById("messages").scrollTop = 0;
      });
      await waitTexts(reader, all);
      assert.equal(await reader.isHidden("#older"), true, "nothing older to load");
      assert.deepEqual([...alice.errors, ...bob.errors], []);
      await alice.context.close();
      await bob.context.close();
    });
  });

  test("a group: created by usernames, everyone sees who said what, ticks need every member", async () => {
    await withServer(async (server) => {
      const names = [uniqueName("ann"), uniqueName("ben"), uniqueName("cat")];
      const people = [];
      for (const name of names) {
        const p = await person(browser, server.url);
        await registerAs(p.page, name);
        people.push(p);
      }
      const [ann, ben, cat] = people;
      await ann.page.click(".new-group summary");
      await ann.page.fill("#new-group-name", "Trip");
      await ann.page.fill("#new-group-members", `${names[1]}, ${names[2]}`);
      await ann.page.click("#new-group button");
      await ann.page.waitForFunction(
        () => document.querySelector("#conversation-title")?.textContent === "Trip",
        null,
        { timeout: WAIT_MS },
      );
      await send(ann.page, "who's in?");
      await waitTick(ann.page, "who's in?", "delivered");

      await openFromList(ben.page, "Trip");
      await waitTexts(ben.page, ["who's in?"]);
      await eventually(
        "the creation notice names everyone",
        () => ben.page.locator("#message-list li.system").first().textContent(),
        (t) =>
          t === `${names[0]} created “Trip” with ${names[1]}, ${names[2]}` ||
          t === `${names[0]} created “Trip” with ${names[2]}, ${names[1]}`,
      );
      await sleep(300);
      assert.equal(await tickOf(ann.page, "who's in?"), "delivered", "cat has not read it yet");
      await openFromList(cat.page, "Trip");
      await waitTick(ann.page, "who's in?", "read");

      await send(ben.page, "me!");
      for (const p of [ann, cat]) {
        await waitTexts(p.page, ["who's in?", "me!"]);
        const sender = p.page.locator("#message-list li.message", { hasText: "me!" }).locator(".sender");
        await eventually("the sender's name", () => sender.textContent(), (t) => t === names[1]);
      }
      assert.deepEqual(people.flatMap((p) => p.errors), []);
      for (const p of people) await p.context.close();
    });
  });
});
