// Copies the hls.js browser bundle out of node_modules into dist/, the
// directory oxcast-ingest serves at /player/ (--player-assets). Run after
// `npm ci`; the output is a build product and is not committed.
import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.join(here, "dist");
const require = createRequire(import.meta.url);

const pkgJson = require.resolve("hls.js/package.json");
const pkgDir = path.dirname(pkgJson);
const { version } = JSON.parse(await readFile(pkgJson, "utf8"));

await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });
const files = [
  ["dist/hls.min.js", "hls.min.js"],
  ["dist/hls.min.js.map", "hls.min.js.map"],
  ["LICENSE", "hls.js.LICENSE.txt"],
];
for (const [from, to] of files) {
  await copyFile(path.join(pkgDir, from), path.join(out, to));
}
await writeFile(
  path.join(out, "versions.json"),
  JSON.stringify({ "hls.js": version }, null, 2) + "\n",
);
console.log(`player/dist: hls.js ${version}`);
