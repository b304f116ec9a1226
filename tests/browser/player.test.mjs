// The player page plays a live stream in a real browser: Debian's
// Chromium, headless, driven by playwright-core, while ffmpeg publishes to
// the real oxcast-ingest binary. Also: the page without hls.js says what to
// run, and the README's quick start, run as written in a fresh copy of the
// repository (a release build: minutes on a cold cache), plays.
//
// Run with `node --test tests/browser/` after `cargo build -p oxcast-ingest`
// and `npm ci && npm run build` in player/ (tests/run.sh does all of it).
//
// Environment:
//   OXCAST_INGEST_BIN     the server binary (default: $CARGO_TARGET_DIR/debug/oxcast-ingest)
//   OXCAST_PLAYER_ASSETS  hls.js directory (default: player/dist in the repository)
//   CHROMIUM              browser executable (default: /usr/bin/chromium)
//   OXCAST_ARTIFACTS      where the screenshot goes (default: $CARGO_TARGET_DIR/test-artifacts)

import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { homedir, tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const targetDir =
  process.env.CARGO_TARGET_DIR || path.join(homedir(), ".cache/oxcast/target");
const serverBin =
  process.env.OXCAST_INGEST_BIN || path.join(targetDir, "debug/oxcast-ingest");
const assetsDir = process.env.OXCAST_PLAYER_ASSETS || path.join(repo, "player/dist");
const chromiumBin = process.env.CHROMIUM || "/usr/bin/chromium";
const artifacts = process.env.OXCAST_ARTIFACTS || path.join(targetDir, "test-artifacts");
const STREAM = "browser-test";

/** Processes started here, stopped in `after` whatever happened. */
const children = [];
let tempRoot;
let httpAddr;
let rtmpAddr;
let serverLog = () => "";
let ffmpegLog = "";

function start(cmd, args) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return child;
}

function stop(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const kill = setTimeout(() => child.kill("SIGKILL"), 5000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill("SIGTERM");
  });
}

/**
 * Starts the all-in-one server with player assets from `assets` (and any
 * `extra` flags) and waits for its `listening` lines. Returns
 * `{ rtmp, http, log }` (log grows).
 */
async function startServer(assets, name, extra = []) {
  const args = [
    "run",
    "--rtmp-listen", "127.0.0.1:0",
    "--http-listen", "127.0.0.1:0",
    "--hls-root", path.join(tempRoot, `hls-${name}`),
    "--hls-fragment", "1s",
    "--player-assets", assets,
    ...extra,
  ];
  const started = { rtmp: null, http: null, log: "" };
  const server = start(serverBin, args);
  server.stderr.on("data", (d) => (started.log += d));
  const lines = createInterface({ input: server.stdout });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`server did not listen within 30 s:\n${started.log}`)),
      30_000,
    );
    server.once("exit", (code) =>
      reject(new Error(`server exited (${code}) before listening:\n${started.log}`)),
    );
    lines.on("line", (line) => {
      const m = /^listening (rtmp|http) (\S+)$/.exec(line.trim());
      if (m && m[1] === "rtmp") started.rtmp = m[2];
      if (m && m[1] === "http") started.http = m[2];
      if (started.rtmp && started.http) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return started;
}

/** Publishes a 640x360 30 fps test pattern with a tone, for at most 90 s. */
function startPublisher(rtmpAddr) {
  const ffmpeg = start("ffmpeg", [
    "-nostdin", "-hide_banner", "-loglevel", "error",
    "-re",
    "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
    "-t", "90",
    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "30",
    "-c:a", "aac", "-b:a", "96k",
    "-f", "flv", `rtmp://${rtmpAddr}/app/${STREAM}`,
  ]);
  ffmpeg.stderr.on("data", (d) => (ffmpegLog += d));
  return ffmpeg;
}

before(async () => {
  assert.ok(existsSync(serverBin), `no server binary at ${serverBin} (cargo build -p oxcast-ingest)`);
  assert.ok(existsSync(chromiumBin), `no browser at ${chromiumBin} (apt-get install chromium)`);
  tempRoot = await mkdtemp(path.join(tmpdir(), "oxcast-browser-"));
  const server = await startServer(assetsDir, "main");
  ({ rtmp: rtmpAddr, http: httpAddr } = server);
  serverLog = () => server.log;
  startPublisher(rtmpAddr);
});

after(async () => {
  await Promise.all(children.map(stop));
  if (tempRoot) await rm(tempRoot, { recursive: true, force: true });
});

test("the player page plays a live stream with hls.js", { timeout: 180_000 }, async (t) => {
  const withHlsJs = existsSync(path.join(assetsDir, "hls.min.js"));
  const context = await launch("main");
  t.after(() => context.close());
  const page = context.pages()[0] ?? (await context.newPage());
  const console = [];
  page.on("console", (m) => console.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console.push(`[pageerror] ${e.message}`));
  const explain = () =>
    `\nbrowser console:\n${console.join("\n")}\nserver log tail:\n${serverLog()
      .split("\n")
      .slice(-30)
      .join("\n")}\nffmpeg:\n${ffmpegLog}`;

  try {
    await page.goto(`http://${httpAddr}/`);
    // The stream shows up in the list once the publisher is connected.
    const entry = page.locator(`button[data-stream="${STREAM}"]`);
    await entry.waitFor({ timeout: 30_000 });
    await entry.click();

    await playsFor(page, 3);
  } catch (e) {
    e.message += explain();
    throw e;
  } finally {
    await mkdir(artifacts, { recursive: true });
    const shot = path.join(artifacts, "player.png");
    await page.screenshot({ path: shot }).catch(() => {});
    t.diagnostic(`screenshot: ${shot}`);
  }

  const state = await page.evaluate(() => ({
    engine: window.oxcastPlayer.engine,
    current: window.oxcastPlayer.current,
    errors: window.oxcastPlayer.errors,
    fatal: window.oxcastPlayer.fatalErrors,
    paused: document.getElementById("video").paused,
    width: document.getElementById("video").videoWidth,
  }));
  t.diagnostic(`player: ${JSON.stringify(state)}`);
  assert.equal(state.current, STREAM);
  assert.deepEqual(state.fatal, [], `hls.js raised fatal errors${explain()}`);
  assert.equal(state.engine, withHlsJs ? "hls.js" : "native", explain());
  assert.equal(state.width, 640, "decoded video has the published width");
  assert.ok(
    !console.some((l) => l.startsWith("[pageerror]")),
    `the page threw${explain()}`,
  );
});

/** Headless Chromium with a fresh profile; playwright never downloads one. */
async function launch(name) {
  return chromium.launchPersistentContext(path.join(tempRoot, `chromium-${name}`), {
    executablePath: chromiumBin,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--autoplay-policy=no-user-gesture-required",
    ],
    viewport: { width: 1280, height: 720 },
  });
}

/** Waits until the page's video plays, then until it advances `seconds`. */
async function playsFor(page, seconds) {
  await page.waitForFunction(() => document.getElementById("video").currentTime > 0, null, {
    timeout: 60_000,
    polling: 200,
  });
  const t0 = await page.evaluate(() => document.getElementById("video").currentTime);
  await page.waitForFunction(
    ([start, s]) => document.getElementById("video").currentTime - start >= s,
    [t0, seconds],
    { timeout: 60_000, polling: 200 },
  );
}

/** The statuses of the page's key requests (`/keys/…`), as they come. */
function keyResponses(page) {
  const statuses = [];
  page.on("response", (r) => {
    if (new URL(r.url()).pathname.startsWith("/keys/")) statuses.push(r.status());
  });
  return statuses;
}

/**
 * A key token as the README's "Minting a key token" section defines it
 * (docs/key-token-vectors.json): expires.viewer.hex(HMAC-SHA-256(secret,
 * "oxcast-key-v1\n" + stream + "\n" + expires + "\n" + viewer)).
 */
function mintToken(secret, stream, expires, viewer) {
  const mac = createHmac("sha256", secret)
    .update(`oxcast-key-v1\n${stream}\n${expires}\n${viewer}`)
    .digest("hex");
  return `${expires}.${viewer}.${mac}`;
}

// The reference's "DRM" step in a browser: segments are AES-128 encrypted,
// the website links to the player page with a token bound to the viewer's
// cookie, and hls.js fetches every key through the HTTP role. Without the
// token the key requests are refused and nothing plays.
test("the player page plays an encrypted stream with a token", { timeout: 180_000 }, async (t) => {
  assert.ok(existsSync(path.join(assetsDir, "hls.min.js")), `no hls.js in ${assetsDir}`);
  const secret = "browser test secret";
  const secretFile = path.join(tempRoot, "key-token-secret");
  await writeFile(secretFile, `${secret}\n`);
  const server = await startServer(assetsDir, "encrypted", [
    "--hls-encryption",
    "--hls-fragments-per-key", "2",
    "--hls-key-auth", "signed",
    "--hls-key-secret-file", secretFile,
  ]);
  startPublisher(server.rtmp);
  const token = mintToken(secret, STREAM, Math.floor(Date.now() / 1000) + 3600, "viewer-7");
  const explain = (console) =>
    `\nbrowser console:\n${console.join("\n")}\nserver log tail:\n${server.log
      .split("\n")
      .slice(-30)
      .join("\n")}\nffmpeg:\n${ffmpegLog}`;

  const context = await launch("encrypted");
  t.after(() => context.close());
  // The website's session: the cookie the token is bound to.
  await context.addCookies([
    { name: "oxcast_viewer", value: "viewer-7", url: `http://${server.http}/` },
  ]);
  const page = context.pages()[0] ?? (await context.newPage());
  const console = [];
  page.on("console", (m) => console.push(`[${m.type()}] ${m.text()}`));
  page.on("pageerror", (e) => console.push(`[pageerror] ${e.message}`));
  const keys = keyResponses(page);
  try {
    await page.goto(`http://${server.http}/?token=${token}#${STREAM}`);
    // 3 s at 1 s segments and a key every 2: at least one key change.
    await playsFor(page, 3);
  } catch (e) {
    e.message += explain(console);
    throw e;
  }
  const state = await page.evaluate(() => ({
    fatal: window.oxcastPlayer.fatalErrors,
    width: document.getElementById("video").videoWidth,
  }));
  t.diagnostic(`encrypted: ${JSON.stringify(state)}, key responses ${JSON.stringify(keys)}`);
  assert.deepEqual(state.fatal, [], `hls.js raised fatal errors${explain(console)}`);
  assert.equal(state.width, 640, "decoded video has the published width");
  assert.ok(keys.length >= 2, `keys fetched: ${JSON.stringify(keys)}`);
  assert.ok(keys.every((s) => s === 200), `key responses: ${JSON.stringify(keys)}`);

  // The same page without the token: every key request is refused, hls.js
  // gives up on the key, and no frame is shown.
  const denied = await context.newPage();
  const deniedKeys = keyResponses(denied);
  await denied.goto(`http://${server.http}/#${STREAM}`);
  await denied.waitForFunction(
    () => window.oxcastPlayer.errors.some((e) => e.details === "keyLoadError"),
    null,
    { timeout: 60_000, polling: 200 },
  );
  const shown = await denied.evaluate(() => document.getElementById("video").videoWidth);
  t.diagnostic(`without a token: key responses ${JSON.stringify(deniedKeys)}`);
  assert.equal(shown, 0, "nothing decoded without a token");
  assert.ok(deniedKeys.length >= 1 && deniedKeys.every((s) => s === 403), JSON.stringify(deniedKeys));
});

// The quick start without `npm run build` in player/: no hls.js on the
// server. The page must say exactly what to run, not show a black video.
test("without hls.js the page says what to run", { timeout: 120_000 }, async (t) => {
  const empty = path.join(tempRoot, "no-player-assets");
  await mkdir(empty, { recursive: true });
  const server = await startServer(empty, "nohlsjs");
  const said = /No hls\.js in .*cd player && npm ci && npm run build/;
  for (let i = 0; i < 50 && !said.test(server.log); i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(server.log, said, "the server says at start what is missing");
  startPublisher(server.rtmp);
  const context = await launch("nohlsjs");
  t.after(() => context.close());
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(`http://${server.http}/`);
  await page.locator(`button[data-stream="${STREAM}"]`).waitFor({ timeout: 30_000 });
  await page.waitForFunction(
    () => document.getElementById("message").textContent.includes("npm run build"),
    null,
    { timeout: 60_000, polling: 200 },
  );
  const text = await page.evaluate(() => document.getElementById("message").textContent);
  t.diagnostic(`page says: ${text}`);
  assert.match(text, /cd player && npm ci && npm run build/);
  assert.match(text, /restart/);
});

/** The shell blocks of the README's "Quick start (one machine)" section. */
function quickStartBlocks() {
  const readme = readFileSync(path.join(repo, "README.md"), "utf8");
  const section = readme.split("## Quick start (one machine)")[1]?.split("\n## ")[0];
  assert.ok(section, "README has a \"Quick start (one machine)\" section");
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1].trim());
}

/** Starts `command` with bash in its own process group (stopped in `after`). */
function startShell(command, cwd) {
  const child = spawn("nice", ["-n", "10", "bash", "-c", command], {
    cwd,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  // Stop the whole group (bash, cargo, the server / ffmpeg) afterwards.
  children.push({
    get exitCode() {
      return child.exitCode;
    },
    get signalCode() {
      return child.signalCode;
    },
    once: (ev, f) => child.once(ev, f),
    kill: (sig) => {
      try {
        process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    },
  });
  return child;
}

/**
 * The repository's tracked files (as in the working tree) copied to `dir`:
 * what a fresh clone has, so the quick start's `npm ci` and `./live` touch
 * neither this checkout nor the npm cache tests/run.sh links into it.
 */
async function freshCopy(dir) {
  const files = execFileSync("git", ["-C", repo, "ls-files", "-z"], { encoding: "utf8" })
    .split("\0")
    .filter((f) => f && existsSync(path.join(repo, f)));
  for (const f of files) {
    await mkdir(path.dirname(path.join(dir, f)), { recursive: true });
    await copyFile(path.join(repo, f), path.join(dir, f));
  }
}

// The README's quick start, exactly as written, in a fresh copy of the
// repository: its first command (build hls.js from npm, then `cargo run
// --release`) serves a player page that plays in Chromium what the README's
// ffmpeg command publishes. Fixed ports 1935 and 8080, as a user gets them.
test("the README quick start plays in the browser", { timeout: 40 * 60_000 }, async (t) => {
  const [serverCmd, publishCmd] = quickStartBlocks();
  const checkout = path.join(tempRoot, "quickstart");
  await freshCopy(checkout);
  t.diagnostic(`server: ${serverCmd}`);
  t.diagnostic(`publish: ${publishCmd}`);
  assert.match(serverCmd, /cargo run --release -p oxcast-ingest/);
  assert.match(publishCmd, /^ffmpeg .* rtmp:\/\/127\.0\.0\.1:1935\/app\/test$/s);
  const server = startShell(serverCmd, checkout);
  let log = "";
  server.stdout.on("data", (d) => (log += d));
  server.stderr.on("data", (d) => (log += d));
  // The release build takes minutes on a cold cache; the server says where
  // to watch once it starts.
  await new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`quick start did not listen within 35 min:\n${log.slice(-4000)}`)),
      35 * 60_000,
    );
    server.once("exit", (code) =>
      reject(new Error(`quick start exited (${code}):\n${log.slice(-4000)}`)),
    );
    const check = () => {
      if (/listening http /.test(log) && /listening rtmp /.test(log)) {
        clearTimeout(timer);
        resolve();
      } else {
        setTimeout(check, 500);
      }
    };
    check();
  });
  assert.match(log, /Publish to: +rtmp:\/\/127\.0\.0\.1:1935\/app\//, "start message names the RTMP URL");
  assert.match(log, /Watch at: +http:\/\/127\.0\.0\.1:8080\//, "start message names the page");
  assert.doesNotMatch(log, /No hls\.js/, "the quick start built hls.js");
  const publisher = startShell(publishCmd, checkout);
  let publishLog = "";
  publisher.stderr.on("data", (d) => (publishLog += d));

  const context = await launch("quickstart");
  t.after(() => context.close());
  const page = context.pages()[0] ?? (await context.newPage());
  const explain = () => `\nserver:\n${log.slice(-3000)}\nffmpeg:\n${publishLog.slice(-2000)}`;
  try {
    await page.goto("http://127.0.0.1:8080/");
    await page.locator('button[data-stream="test"]').click({ timeout: 60_000 });
    await page.waitForFunction(() => document.getElementById("video").currentTime > 2, null, {
      timeout: 90_000,
      polling: 200,
    });
  } catch (e) {
    e.message += explain();
    throw e;
  }
  const engine = await page.evaluate(() => window.oxcastPlayer.engine);
  assert.equal(engine, "hls.js", explain());
});
