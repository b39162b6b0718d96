/** The published shape: ESM and CJS entry points, and the wire types against the gate's OpenAPI document. */

import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { WIRE_FIELDS } from "../src/index.js";
import { REPO } from "./harness.js";

const require = createRequire(import.meta.url);

describe("package", () => {
  it("works through require() and import, with the same exports", async () => {
    const cjs = require("../dist/index.cjs");
    const esm = await import("../dist/index.js");
    for (const name of ["Session", "SessionKit", "Auth", "Connection", "SessionGateError", "SessionResource"]) {
      expect(typeof cjs[name]).toBe("function");
      expect(typeof (esm as Record<string, unknown>)[name]).toBe("function");
    }
    expect(Object.keys(cjs).sort()).toEqual(Object.keys(esm).sort());
    const pkg = JSON.parse(readFileSync(join(REPO, "clients/js/package.json"), "utf8"));
    expect(pkg.dependencies ?? {}).toEqual({});
    expect(pkg.exports["."].require.default).toBe("./dist/index.cjs");
  });

  it("ships the browser bundle the gate embeds, byte for byte", () => {
    const built = readFileSync(join(REPO, "clients/js/dist/sessiongate.global.js"), "utf8");
    const embedded = readFileSync(join(REPO, "src/pages/sessiongate.js"), "utf8");
    expect(embedded).toBe(built);
  });

  it("declares exactly the fields the OpenAPI document gives each schema", () => {
    const doc = JSON.parse(readFileSync(join(REPO, "docs/openapi.json"), "utf8"));
    const schemas = doc.components.schemas as Record<string, { properties: object; required?: string[] }>;
    for (const [name, fields] of Object.entries(WIRE_FIELDS)) {
      const schema = schemas[name];
      expect(schema, name).toBeDefined();
      expect(Object.keys(fields).sort(), name).toEqual(Object.keys(schema?.properties ?? {}).sort());
    }
    // Every status the SDK knows is the document's, and the other way round.
    expect(schemas.Status).toMatchObject({
      enum: ["active", "ended", "removed", "revoked", "expired", "abandoned", "replaced"],
    });
  });
});
