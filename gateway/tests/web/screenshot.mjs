// Renders the README's screenshot of the web client: a real server, real browsers, a short
// conversation. Not a test; run by hand after changing the look of the client:
//   CONFAB_BIN=target/debug/confab node gateway/tests/web/screenshot.mjs docs/web-client.png
import { resolve } from "node:path";
import {
  cleanup, freePort, freshDir, launchBrowser, openDirect, openFromList, person, registerAs,
  send, sleep, startServer, waitTexts, waitTick,
} from "./harness.mjs";

const out = resolve(process.argv[2] || "web-client.png");
const dir = freshDir();
const server = await startServer({ port: await freePort(), dir });
const browser = await launchBrowser();
try {
  const [alice, bob, carol] = [
    await person(browser, server.url),
    await person(browser, server.url),
    await person(browser, server.url),
  ];
  await registerAs(alice.page, "alice");
  await registerAs(bob.page, "bob");
  await registerAs(carol.page, "carol");

  await carol.page.click(".new-group summary");
  await carol.page.fill("#new-group-name", "Weekend trip");
  await carol.page.fill("#new-group-members", "alice, bob");
  await carol.page.click("#new-group button");
  await sleep(300);
  await send(carol.page, "Cabin is booked for Saturday!");
  await send(carol.page, "Who brings the board games?");

  await openDirect(bob.page, "alice");
  await send(bob.page, "Hey! Are you coming to the climbing gym tonight?");
  await openFromList(alice.page, "bob");
  await waitTexts(alice.page, ["Hey! Are you coming to the climbing gym tonight?"]);
  await send(alice.page, "Yes, around 7. Can you lend me shoes?");
  await send(bob.page, "Sure, size 42 works?");
  await send(alice.page, "Perfect, thanks!");
  await waitTick(alice.page, "Perfect, thanks!", "read");
  await send(alice.page, "See you there");
  await waitTick(alice.page, "See you there", "read");
  await bob.page.fill("#composer-text", "typ");
  await bob.page.type("#composer-text", "ing");
  await sleep(600);
  await alice.page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  await server.kill();
  cleanup(dir);
}
