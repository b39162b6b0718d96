/** The SDK against the real gate, redis-server and echo upstreams, in Node (bearer mode). */

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import {
  Auth,
  type ChangeEvent,
  Connection,
  Session,
  SessionGateError,
  SessionResource,
  type TicketStorage,
} from "../src/index.js";
import { ADMIN_TOKEN, countingFetch, Echo, Gate, Redis, until } from "./harness.js";

let redis: Redis;
let echo: Echo;
let gate: Gate;

const USERS = [
  "alice",
  "bob",
  "carol",
  "dave",
  "erin",
  "frank",
  "grace",
  "heidi",
  "ivan",
  "judy",
  "kim",
  "leo",
  "mallory",
  "nina",
  "oscar",
  "paul",
  "quinn",
  "rita",
  "sam",
];

beforeAll(async () => {
  redis = await Redis.spawn();
  echo = await Echo.spawn();
  gate = await Gate.spawn({ redis, echo, users: USERS, rateLimit: "{per_ip: 10000/min, per_user: 5/min}" });
}, 60_000);

afterAll(async () => {
  await gate?.destroy();
  await echo?.stop();
  await redis?.stop();
});

function session(extra: Partial<ConstructorParameters<typeof Session>[0]> = {}): Session {
  return new Session({
    host: gate.ws,
    WebSocket: WebSocket as never,
    reconnect: { minDelay: 50, maxDelay: 400 },
    ...extra,
  });
}

function changes(s: Session): ChangeEvent[] {
  const out: ChangeEvent[] = [];
  s.on("change", (e: ChangeEvent) => out.push(e));
  return out;
}

describe("login, attributes, info", () => {
  it("logs in and exposes the session as Dates, vars, statuses and isexpired(now)", async () => {
    const s = session();
    const seen = changes(s);
    const r = await s.login({ username: "alice", password: "pw", vars: { device: "node" } });
    expect(r.ticket).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    expect(r.session).toBeInstanceOf(SessionResource);
    expect(s.status).toBe("active");
    expect(s.userId).toBe("u-alice");
    expect(s.user_id).toBe("u-alice");
    expect(s.username).toBe("alice");
    expect(s.vars).toEqual({ device: "node", tier: "gold" });
    expect(() => {
      (s.vars as Record<string, string>).tier = "x";
    }).toThrow();
    for (const d of [s.createdAt, s.lastActiveAt, s.expireAt, s.abandonAt, s.updatedAt]) expect(d).toBeInstanceOf(Date);
    const exp = (s.expireAt as Date).getTime() / 1000;
    expect(exp - Date.now() / 1000).toBeGreaterThan(3500);
    expect(s.isexpired(Date.now() / 1000)).toBe(false);
    expect(s.isexpired(exp + 1)).toBe(true);
    expect(seen.map((e) => [e.reason, e.status, e.userCtx.name, e.name])).toEqual([
      ["login", "active", "Alice", "Alice"],
    ]);
    const info = await s.info();
    expect(info.userCtx).toEqual({ name: "Alice", id: "u-alice", roles: ["player"] });
    expect(info.session?.id).toBe(s.id);
    expect(info.info.authenticated).toBe("bearer");
    // Nothing moved: info() emits no change.
    expect(seen).toHaveLength(1);
    await s.logout();
    expect(s.status).toBe("ended");
    expect(seen.map((e) => [e.reason, e.status, e.userCtx.name])).toEqual([
      ["login", "active", "Alice"],
      ["logout", "ended", null],
    ]);
    const after = await s.info();
    expect(after.userCtx.name).toBeNull();
    expect(after.session).toBeNull();
    s.dispose();
  });

  it("follows kanso's callback forms: login(username, password, cb), info(cb), logout(cb)", async () => {
    const s = session();
    const anon = await new Promise<{ userCtx: { name: string | null } }>((ok, fail) =>
      s.info((err, info) => (err ? fail(err) : ok(info as never))),
    );
    expect(anon.userCtx.name).toBeNull();
    const res = await new Promise<unknown>((ok, fail) => s.login("bob", "pw", (err, r) => (err ? fail(err) : ok(r))));
    expect((res as { user: { id: string } }).user.id).toBe("u-bob");
    const bad = await new Promise<unknown>((ok) => s.login("bob", "wrong", (err) => ok(err)));
    expect(bad).toBeInstanceOf(SessionGateError);
    expect((bad as SessionGateError).code).toBe("bad_credentials");
    expect((bad as SessionGateError).status).toBe(401);
    const err = await new Promise<unknown>((ok) => s.logout((e) => ok(e)));
    expect(err).toBeNull();
    s.dispose();
  });

  it("touch, list/getSessions, end(id), remove(id) and the records' own end/remove", async () => {
    const a = session();
    const b = session();
    await a.login({ username: "carol", password: "pw" });
    await b.login({ username: "carol", password: "pw" });
    const before = a.lastActiveAt as Date;
    const touched = await a.touch();
    expect(touched).toBeInstanceOf(SessionResource);
    expect(touched.lastActiveAt.getTime()).toBeGreaterThanOrEqual(before.getTime());
    const list = await a.list();
    expect(list.map((x) => x.id)).toEqual([b.id, a.id]); // newest first
    expect((await a.getSessions()).map((x) => x.status)).toEqual(["active", "active"]);
    const ended = await a.end(b.id as string);
    expect(ended.status).toBe("ended");
    expect((await a.list()).find((x) => x.id === b.id)?.status).toBe("ended");
    const removed = await a.remove(b.id as string);
    expect(removed.status).toBe("removed");
    expect((await a.list()).map((x) => x.id)).toEqual([a.id]);
    // Clerk's shape: the record ends itself.
    const [mine] = await a.list();
    const seen = changes(a);
    const done = await (mine as SessionResource).end();
    expect(done.status).toBe("ended");
    expect(a.status).toBe("ended");
    expect(seen.map((e) => e.status)).toEqual(["ended"]);
    await expect(a.touch()).rejects.toMatchObject({ code: "session_ended", status: 401 });
    a.dispose();
    b.dispose();
  });

  it("emits change with the status when the server ended the session (401 session_*)", async () => {
    const s = session();
    await s.login({ username: "dave", password: "pw" });
    const seen = changes(s);
    const r = await gate.adminCall("POST", `/admin/sessions/${s.id}/revoke`);
    expect(r.status).toBe(200);
    const info = await s.info();
    expect(info.userCtx.name).toBeNull();
    expect(s.status).toBe("revoked");
    expect(seen.map((e) => [e.status, e.userCtx.name])).toEqual([["revoked", null]]);
    s.dispose();
  });

  it("maps refusals to one error class with code, status and retryAfter (429)", async () => {
    const s = session();
    const codes: Array<[string, number, number | undefined]> = [];
    for (let i = 0; i < 6; i++) {
      try {
        await s.login({ username: "mallory", password: "nope" });
      } catch (err) {
        expect(err).toBeInstanceOf(SessionGateError);
        const e = err as SessionGateError;
        codes.push([e.code, e.status, e.retryAfter]);
      }
    }
    expect(codes.slice(0, 5).map((c) => c[0])).toEqual(Array(5).fill("bad_credentials"));
    const [code, status, retry] = codes[5] ?? [];
    expect([code, status]).toEqual(["rate_limited", 429]);
    expect(retry).toBeGreaterThan(0);
    await expect(new Session({ host: "http://127.0.0.1:1" }).login("x", "y")).rejects.toMatchObject({
      code: "network_error",
      status: 0,
    });
    s.dispose();
  });
});

describe("refresh", () => {
  it("refresh() gives a new ticket and emits change", async () => {
    const s = session();
    await s.login({ username: "erin", password: "pw" });
    const t0 = s.ticket;
    const e0 = (s.expireAt as Date).getTime();
    const seen = changes(s);
    await new Promise((r) => setTimeout(r, 1100)); // exp has second precision: let it move
    const r = await s.refresh();
    expect(r.status).toBe("active");
    expect(s.ticket).not.toBe(t0);
    expect((s.expireAt as Date).getTime()).toBeGreaterThan(e0);
    expect(seen.map((e) => e.reason)).toEqual(["refresh"]);
    s.dispose();
  });

  it("sends one POST /_session/refresh for 50 concurrent calls once the ticket is due", async () => {
    const { fetch, calls } = countingFetch();
    let shift = 0;
    // Once the refresh is on its way the clock is back to normal, so the
    // refreshed ticket is not due again.
    const watched: typeof globalThis.fetch = (input, init) => {
      if (String(input).endsWith("/_session/refresh")) shift = 0;
      return fetch(input, init);
    };
    const s = session({ fetch: watched, controller: "echo", now: () => Date.now() + shift });
    await s.login({ username: "frank", password: "pw" });
    // The clock jumps to 30 s before exp: inside refreshBefore (60 s).
    shift = (s.expireAt as Date).getTime() - Date.now() - 30_000;
    const echoes = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        s.controller.echo?.get<{ path: string; headers: Record<string, string> }>(`/n/${i}`),
      ),
    );
    const refreshes = calls.filter((c) => c === `POST ${gate.http}/_session/refresh`);
    expect(refreshes).toHaveLength(1);
    expect(echoes.map((e) => e?.path)).toEqual(Array.from({ length: 50 }, (_, i) => `/n/${i}`));
    expect(new Set(echoes.map((e) => e?.headers["x-session-id"]))).toEqual(new Set([s.id]));
    // The refreshed ticket is what every call carried.
    const i = calls.indexOf(`POST ${gate.http}/_session/refresh`);
    expect(calls.slice(0, i).filter((c) => c.includes("/controller/"))).toHaveLength(0);
    s.dispose();
  });
});

describe("refresh, by the timer and by info()", () => {
  it("refreshes by itself refreshBefore seconds before exp, with no call waiting", async () => {
    // ttl is 1 h: with refreshBefore 3599 s the ticket is due one second after login.
    const s = session({ refreshBefore: 3599 });
    await s.login({ username: "nina", password: "pw" });
    const first = (s.expireAt as Date).getTime();
    const seen = changes(s);
    await until("a refresh by the timer", () => seen.some((e) => e.reason === "refresh"), 5000);
    expect((s.expireAt as Date).getTime()).toBeGreaterThan(first);
    s.dispose();
  });

  it("a timer that fires before the session's clock says the ticket is due waits the rest", async () => {
    // A clock slower than the timers' (as Date.now() can be by a millisecond):
    // the timer set for the due moment fires before this clock reaches it.
    const start = Date.now();
    const s = session({ refreshBefore: 3599, now: () => start + (Date.now() - start) * 0.9 });
    await s.login({ username: "sam", password: "pw" });
    const seen = changes(s);
    await until("a refresh by the timer", () => seen.some((e) => e.reason === "refresh"), 5000);
    s.dispose();
  });

  it("tries a timer refresh that failed again, after a backoff, until one works", async () => {
    let failed = 0;
    // The first refresh meets a network failure; every other call goes through.
    const flaky: typeof fetch = (input, init) => {
      if (String(input).endsWith("/refresh") && failed === 0) {
        failed++;
        return Promise.reject(new TypeError("fetch failed"));
      }
      return fetch(input, init);
    };
    const s = session({ refreshBefore: 3599, fetch: flaky });
    await s.login({ username: "rita", password: "pw" });
    const first = (s.expireAt as Date).getTime();
    const seen = changes(s);
    await until("a refresh after the failed one", () => seen.some((e) => e.reason === "refresh"), 8000);
    expect(failed).toBe(1);
    expect((s.expireAt as Date).getTime()).toBeGreaterThan(first);
    s.dispose();
  });

  it("info() emits change when it finds the session moved (refreshed by another client)", async () => {
    const s = session();
    await s.login({ username: "oscar", password: "pw" });
    const seen = changes(s);
    const before = (s.expireAt as Date).getTime();
    await new Auth({ host: gate.http }).refresh(s.ticket as string);
    const info = await s.info();
    expect(info.session?.expireAt.getTime()).toBeGreaterThan(before);
    expect(seen.map((e) => [e.reason, e.status])).toEqual([["info", "active"]]);
    expect((s.expireAt as Date).getTime()).toBe(info.session?.expireAt.getTime());
    s.dispose();
  });
});

describe("gateways and controllers", () => {
  it("session.gateway.<name>.on/emit speak {event, data}; other frames are `message`", async () => {
    const s = session({ gateway: "chat", controller: "echo" });
    await s.login({ username: "grace", password: "pw" });
    const gw = s.gateway.chat;
    if (!gw) throw new Error("no gateway");
    const got = new Promise((ok) => gw.once("chat", ok));
    gw.emit("chat", { text: "hi", n: 1 });
    expect(await got).toEqual({ text: "hi", n: 1 });
    const raw = new Promise((ok) => gw.once("message", ok));
    gw.send("plain text");
    expect(await raw).toBe("plain text");
    const r = await s.controller.echo?.post<{ method: string; body: string; headers: Record<string, string> }>("/x", {
      a: 1,
    });
    expect(r?.method).toBe("POST");
    expect(JSON.parse(r?.body ?? "")).toEqual({ a: 1 });
    expect(r?.headers["x-session-user"]).toBe("u-grace");
    expect(r?.headers["x-session-var-tier"]).toBe("gold");
    for (const m of ["put", "patch", "delete"] as const) {
      const x =
        m === "delete"
          ? await s.controller.echo?.delete<{ method: string }>("/y")
          : await s.controller.echo?.[m]<{ method: string }>("/y", {});
      expect(x?.method).toBe(m.toUpperCase());
    }
    s.dispose();
  });

  it("add({gateway, controller}) after login; emits before the socket opens are queued (bounded)", async () => {
    const s = session({ queueSize: 3 });
    await s.login({ username: "heidi", password: "pw" });
    s.add({ gateway: "chat", controller: "echo" });
    const gw = s.gateway.chat;
    if (!gw) throw new Error("no gateway");
    const got: unknown[] = [];
    gw.on("n", (d: unknown) => got.push(d));
    gw.emit("n", 1).emit("n", 2).emit("n", 3);
    expect(() => gw.emit("n", 4)).toThrow(expect.objectContaining({ code: "queue_full" }));
    await until("queued emits echoed", () => got.length === 3);
    expect(got).toEqual([1, 2, 3]);
    s.dispose();
  });

  it("ends for good on 4401 when another client ends the session, with change", async () => {
    const a = session({ gateway: "chat" });
    const b = session();
    await a.login({ username: "ivan", password: "pw" });
    await b.login({ username: "ivan", password: "pw" });
    const gw = a.gateway.chat;
    if (!gw) throw new Error("no gateway");
    await until("socket open", () => gw.state === "open");
    const seen = changes(a);
    const closes: Array<{ code: number; reason: string }> = [];
    gw.on("close", (c: { code: number; reason: string }) => closes.push(c));
    await b.end(a.id as string);
    await until("change after 4401", () => seen.length === 1, 3000);
    expect(closes).toEqual([{ code: 4401, reason: "session ended" }]);
    expect(seen[0]?.status).toBe("ended");
    expect(seen[0]?.reason).toBe("ended");
    expect(a.status).toBe("ended");
    expect(gw.state).toBe("closed");
    expect(gw.ended).toBe("ended");
    expect(() => gw.emit("x", 1)).toThrow(expect.objectContaining({ code: "session_ended" }));
    a.dispose();
    b.dispose();
  });

  it("off() removes a listener; close() ends the gateway for good; ws is loaded when no WebSocket is given", async () => {
    // No WebSocket option: Node 20 has no global one, so the SDK imports `ws`.
    const s = new Session({ host: gate.ws, gateway: "chat" });
    await s.login({ username: "paul", password: "pw" });
    const gw = s.gateway.chat;
    if (!gw) throw new Error("no gateway");
    const kept: unknown[] = [];
    const dropped: unknown[] = [];
    const drop = (d: unknown) => dropped.push(d);
    gw.on("e", (d: unknown) => kept.push(d));
    gw.on("e", drop);
    gw.off("e", drop);
    gw.emit("e", 1);
    await until("echo", () => kept.length === 1);
    expect(dropped).toEqual([]);
    gw.close();
    expect(gw.state).toBe("closed");
    expect(() => gw.emit("e", 2)).toThrow(expect.objectContaining({ code: "closed" }));
    s.dispose();
  });

  it("a new login on the same Session moves its gateways to the new session", async () => {
    const s = session({ gateway: "chat" });
    await s.login({ username: "quinn", password: "pw" });
    const gw = s.gateway.chat;
    if (!gw) throw new Error("no gateway");
    let opens = 0;
    gw.on("open", () => opens++);
    await until("open", () => opens === 1);
    const old = s.id as string;
    await s.login({ username: "quinn", password: "pw" });
    await until("reopened for the new session", () => opens === 2);
    expect((await gate.adminCall("POST", `/admin/sessions/${old}/revoke`)).status).toBe(200);
    const echoed = new Promise((ok) => gw.once("still", ok));
    gw.emit("still", "here");
    expect(await echoed).toBe("here");
    expect(s.status).toBe("active");
    expect(s.id).not.toBe(old);
    s.dispose();
  });

  it("Auth and Connection for those who hold the ticket", async () => {
    const auth = new Auth({ host: gate.ws, gateway: "auth", controller: "auth" });
    const ticket = await auth.login({ username: "judy", password: "pw" });
    expect(typeof ticket).toBe("string");
    const conn = new Connection({
      ticket,
      host: gate.ws,
      gateway: "chat",
      controller: "echo",
      WebSocket: WebSocket as never,
    });
    const got = new Promise((ok) => conn.on("anyEvent", ok));
    conn.emit("anyEvent", { data: "any Data" });
    expect(await got).toEqual({ data: "any Data" });
    const data = await conn.get<{ path: string }>("/");
    expect(data.path).toBe("/");
    expect((await conn.post<{ method: string }>("/anyRoute", {})).method).toBe("POST");
    expect((await auth.info(ticket)).user.id).toBe("u-judy");
    expect((await auth.list(ticket)).sessions).toHaveLength(1);
    await auth.logout(ticket);
    await expect(auth.info(ticket)).rejects.toMatchObject({ code: "session_ended", status: 401 });
    conn.close();
  });

  it("derives ws:// from http:// hosts and honours paths", async () => {
    const s = new Session({
      host: gate.http,
      WebSocket: WebSocket as never,
      paths: { gateway: { talk: "/gateway/chat" }, controller: (n) => `/controller/${n === "e" ? "echo" : n}` },
    });
    s.add({ gateway: "talk", controller: "e" });
    expect(s.gateway.talk?.url).toBe(`${gate.ws}/gateway/chat`);
    expect(s.controller.e?.url).toBe(`${gate.http}/controller/echo`);
    expect(new Session({ host: "wss://example.com/" }).bases).toEqual({
      http: "https://example.com",
      ws: "wss://example.com",
    });
    await s.login({ username: "kim", password: "pw" });
    expect((await s.controller.e?.get<{ path: string }>("/p"))?.path).toBe("/p");
    s.dispose();
  });
});

describe("storage: restore and restoreAll", () => {
  it("restores from a custom {read, write, remove} storage, one session or all", async () => {
    const items = new Map<string, string>();
    const storage: TicketStorage = {
      read: async (k) => items.get(k) ?? null,
      write: async (k, v) => {
        items.set(k, v);
      },
      remove: async (k) => {
        items.delete(k);
      },
    };
    const first = session({ storage });
    await first.login({ username: "leo", password: "pw" });
    const second = session({ storage });
    await second.login({ username: "leo", password: "pw" });
    const fresh = session({ storage });
    const seen = changes(fresh);
    const current = await fresh.init();
    expect(current?.id).toBe(second.id);
    expect(fresh.status).toBe("active");
    expect(seen.map((e) => e.reason)).toEqual(["restore"]);
    const all = await fresh.restoreAll();
    expect(all.map((x) => x.id).sort()).toEqual([first.id, second.id].sort());
    const back = await fresh.restore(first.id as string);
    expect(back?.id).toBe(first.id);
    expect(fresh.id).toBe(first.id);
    await first.logout();
    const left = await session({ storage }).restoreAll();
    expect(left.map((x) => x.id)).toEqual([second.id]);
    expect(await session().init()).toBeNull();
    first.dispose();
    second.dispose();
    fresh.dispose();
  });
});

describe("the gate's admin event stream", () => {
  it("GET /admin/events needs the token and streams one `event: session` per status change", async () => {
    expect((await fetch(`${gate.adminUrl}/admin/events`)).status).toBe(401);
    const wrong = await fetch(`${gate.adminUrl}/admin/events`, { headers: { authorization: "Bearer nope" } });
    expect([wrong.status, (await wrong.json()).error]).toEqual([401, "invalid_ticket"]);
    const post = await fetch(`${gate.adminUrl}/admin/events`, {
      method: "POST",
      headers: { authorization: "Bearer x" },
    });
    expect([post.status, post.headers.get("allow")]).toEqual([405, "GET"]);
    const ac = new AbortController();
    const res = await fetch(`${gate.adminUrl}/admin/events`, {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      signal: ac.signal,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reader = (res.body as ReadableStream<Uint8Array>)
      .pipeThrough(new TextDecoderStream() as unknown as TransformStream<Uint8Array, string>)
      .getReader();
    let buf = "";
    const first = await reader.read();
    buf += first.value ?? "";
    expect(buf.startsWith(": connected\n\n")).toBe(true);
    const s = session();
    await s.login({ username: "kim", password: "pw" });
    await s.logout();
    // Other tests' sessions may still be heard (events travel through Redis):
    // read until this session's one.
    const mine = () =>
      [...buf.matchAll(/event: session\ndata: (.*)\n\n/g)]
        .map((m) => JSON.parse(m[1] ?? "{}"))
        .find((e) => e.sid === s.id);
    while (!mine()) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
    }
    const ev = mine();
    expect(Object.keys(ev).sort()).toEqual(["at", "sid", "status", "userId"]);
    expect([ev.sid, ev.userId, ev.status]).toEqual([s.id, "u-kim", "ended"]);
    expect(Number.isNaN(Date.parse(ev.at))).toBe(false);
    ac.abort();
    s.dispose();
  });
});
