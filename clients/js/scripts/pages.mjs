// Copies the browser bundle to where the gate embeds it (src/pages/), so
// `sessiongate demo` serves the SDK from the binary alone.
import { copyFileSync } from "node:fs";

copyFileSync("dist/sessiongate.global.js", "../../src/pages/sessiongate.js");
console.log("src/pages/sessiongate.js updated");
