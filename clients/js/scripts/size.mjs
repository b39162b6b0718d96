// Prints the size of the builds, minified and gzipped (the figure to watch).
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

for (const f of ["dist/sessiongate.global.js", "dist/index.js", "dist/index.cjs"]) {
  const b = readFileSync(f);
  console.log(`${f}: ${b.length} B, gzip ${gzipSync(b, { level: 9 }).length} B`);
}
