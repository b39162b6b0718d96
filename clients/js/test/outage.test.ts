/** Store outage (503) and a gate restart under an open gateway, against the real binary. */

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { Session, SessionGateError } from "../src/index.js";
import { Echo, Gate, Redis, until } from "./harness.js";

let redis: Redis;
let echo: Echo;
let gate: Gate;

beforeAll(async () => {
  redis = await Redis.spawn();
  echo = await Echo.spawn();
  gate = await Gate.spawn({ redis, echo, users: ["olga", "pete"] });
}, 60_000);

afterAll(async () => {
  await gate?.destroy();
  await echo?.stop();
  await redis?.stop();
});

describe("outages", () => {
  it("reconnects a gateway after a gate restart, with a fresh ticket, and keeps queued emits", async () => {
    const s = new Session({
      host: gate.ws,
      gateway: "chat",
      WebSocket: WebSocket as never,
      reconnect: { minDelay: 50, maxDelay: 300 },
    });
    await s.login({ username: "olga", password: "pw" });
    const gw = s.gateway.chat;
    if (!gw) throw new Error("no gateway");
    await until("open", () => gw.state === "open");
    const closes: number[] = [];
    let opens = 0;
    const retries: Array<{ attempt: number; delay: number }> = [];
    gw.on("reconnecting", (r: { attempt: number; delay: number }) => retries.push(r));
    gw.on("close", (c: { code: number }) => closes.push(c.code));
    gw.on("open", () => opens++);
    await gate.stop();
    await until("close seen", () => closes.length >= 1);
    expect(closes[0]).toBe(1001); // going away: a restart, not the session's end
    expect(["reconnecting", "connecting"]).toContain(gw.state);
    // Listening before the restart: the gateway may be back before start() returns.
    const echoed = new Promise((ok) => gw.once("after", ok));
    gw.emit("after", { n: 1 }); // queued while the gate is down
    expect(gw.queued).toBe(1);
    await gate.start();
    await until("reopened", () => gw.state === "open" && opens >= 1, 15_000);
    expect(await echoed).toEqual({ n: 1 });
    // Backoff: attempts numbered from 1, each delay within [step/2, step] of 50 ms doubling, capped at 300.
    expect(retries[0]?.attempt).toBe(1);
    retries.forEach((r, i) => {
      const step = Math.min(300, 50 * 2 ** i);
      expect(r.delay).toBeGreaterThanOrEqual(step / 2);
      expect(r.delay).toBeLessThanOrEqual(step);
    });
    expect(s.status).toBe("active");
    expect(gw.ended).toBeNull();
    s.dispose();
  }, 30_000);

  it("answers 503 store_unavailable with retryAfter when Redis is down", async () => {
    const s = new Session({ host: gate.http });
    await s.login({ username: "pete", password: "pw" });
    const seen: unknown[] = [];
    s.on("change", (e) => seen.push(e));
    await redis.stop();
    const err = await s.info().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SessionGateError);
    expect(err).toMatchObject({ code: "store_unavailable", status: 503, retryAfter: 1 });
    // An outage is not the end of the session.
    expect(s.status).toBe("active");
    expect(seen).toEqual([]);
    await expect(s.touch()).rejects.toMatchObject({ code: "store_unavailable", status: 503 });
    s.dispose();
  }, 20_000);
});
