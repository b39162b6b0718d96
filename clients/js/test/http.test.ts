/** The fetch wrapper on its own: URL derivation, error mapping, Retry-After. */

import { describe, expect, it } from "vitest";
import { bases, call, join } from "../src/http.js";
import { SessionGateError } from "../src/index.js";

const answer =
  (status: number, body: string, headers: Record<string, string> = {}) =>
  async (): Promise<Response> =>
    new Response(body, { status, headers });

describe("http", () => {
  it("derives each scheme from the other and keeps a path prefix", () => {
    expect(bases("ws://h:1")).toEqual({ http: "http://h:1", ws: "ws://h:1" });
    expect(bases("https://h/gate/")).toEqual({ http: "https://h/gate", ws: "wss://h/gate" });
    expect(() => bases("ftp://h")).toThrow(SessionGateError);
    expect(join("http://h/controller/x", "/a")).toBe("http://h/controller/x/a");
    expect(join("http://h/controller/x/", "a?b=1")).toBe("http://h/controller/x/a?b=1");
  });

  it("maps a refusal to code, status and retryAfter, seconds or an HTTP date", async () => {
    const e = await call(
      answer(503, '{"error":"store_unavailable","message":"m"}', {
        "content-type": "application/json",
        "retry-after": "3",
      }),
      "GET",
      "http://h/",
      { cookie: false },
    ).catch((x: unknown) => x);
    expect(e).toMatchObject({ code: "store_unavailable", status: 503, retryAfter: 3, message: "m" });
    const later = new Date(Date.now() + 10_000).toUTCString();
    const d = await call(answer(429, "busy", { "retry-after": later }), "GET", "http://h/", { cookie: false }).catch(
      (x: unknown) => x,
    );
    expect(d).toMatchObject({ code: "http_429", status: 429 });
    expect((d as SessionGateError).retryAfter).toBeGreaterThanOrEqual(9);
  });

  it("refuses a success whose JSON does not parse", async () => {
    await expect(
      call(answer(200, "{nope", { "content-type": "application/json" }), "GET", "http://h/", { cookie: false }),
    ).rejects.toMatchObject({ code: "bad_response", status: 200 });
  });
});
