import { defineConfig } from "tsup";

export default defineConfig([
  {
    entry: { index: "src/index.ts" },
    format: ["esm", "cjs"],
    dts: true,
    sourcemap: true,
    clean: true,
    target: "es2022",
    platform: "neutral",
    external: ["ws"],
  },
  {
    // The browser build the demo page loads (global `sessiongate`). The gate
    // embeds a committed copy (src/pages/sessiongate.js, written by
    // `npm run pages`) so the binary alone serves it; a test keeps them equal.
    entry: { sessiongate: "src/index.ts" },
    format: ["iife"],
    globalName: "sessiongate",
    minify: true,
    target: "es2020",
    platform: "browser",
    external: ["ws"],
    outExtension: () => ({ js: ".global.js" }),
  },
]);
