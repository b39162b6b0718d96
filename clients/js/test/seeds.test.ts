/**
 * The seeds' own examples, in their call shapes, against the real gate:
 * enjine (import and require forms, Session and Auth/Connection), kanso's
 * callbacks and `change`, Clerk's session methods, SessionKit's storage
 * and restore, Nakama's attributes. Run on the built package, resolved by
 * its own name as an app would.
 */

import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Echo, Gate, REPO, Redis, until } from "./harness.js";

const require = createRequire(import.meta.url);

let redis: Redis;
let echo: Echo;
let gate: Gate;

beforeAll(async () => {
  redis = await Redis.spawn();
  echo = await Echo.spawn();
  gate = await Gate.spawn({ redis, echo, users: ["yourUser", "testuser", "nk"], names: ["auth", "anyName"] });
}, 60_000);

afterAll(async () => {
  await gate?.destroy();
  await echo?.stop();
  await redis?.stop();
});

describe("the seeds' examples", () => {
  it("resolves @sessiongate/client by name through import and require", () => {
    const out = execFileSync(
      process.execPath,
      [
        "--input-type=module",
        "-e",
        "import { Session } from '@sessiongate/client'; import { createRequire } from 'node:module'; const r = createRequire(process.cwd() + '/x.js'); console.log(typeof Session, typeof r('@sessiongate/client').Session)",
      ],
      { cwd: `${REPO}/clients/js` },
    ).toString();
    expect(out.trim()).toBe("function function");
  });

  it("enjine: Session with init, login, add, gateway on/emit, controller get/post (import form)", async () => {
    const { Session } = await import("@sessiongate/client");
    // Node 20 has no global WebSocket: the SDK loads the `ws` package by itself.
    const session = new Session({ host: gate.ws, gateway: "auth", controller: "auth" });
    session.init();
    await session.login({ username: "yourUser", password: "pw" });
    session.add({ gateway: "anyName", controller: "anyName" });
    const got = new Promise((ok) => session.gateway.anyName?.on("anyEvent", (data: unknown) => ok(data)));
    session.gateway.anyName?.emit("anyEvent", { data: "any Data" });
    expect(await got).toEqual({ data: "any Data" });
    const data = (await session.controller.anyName?.get("/anyRoute")) as { path: string };
    expect(data.path).toBe("/anyRoute");
    expect(((await session.controller.anyName?.post("/anyRoute", {})) as { method: string }).method).toBe("POST");
    await until("the auth gateway open", () => session.gateway.auth?.state === "open");
    session.dispose();
  });

  it("enjine: Auth and Connection (require form)", async () => {
    const { Auth, Connection } = require("@sessiongate/client");
    const auth = new Auth({ host: gate.ws, gateway: "auth", controller: "auth" });
    const ticket = await auth.login({ username: "yourUser", password: "pw" });
    const connection = new Connection({ ticket, host: gate.ws, gateway: "anyName", controller: "anyName" });
    const got = new Promise((ok) => connection.on("anyEvent", (data: unknown) => ok(data)));
    connection.emit("anyEvent", { data: "any Data" });
    expect(await got).toEqual({ data: "any Data" });
    const data = await connection.get("/");
    expect(data.path).toBe("/");
    expect((await connection.post("/anyRoute", {})).method).toBe("POST");
    connection.close();
  });

  it("kanso: callbacks and the change event with userCtx", async () => {
    const { Session } = require("@sessiongate/client");
    const session = new Session({ host: gate.http });
    const names: Array<string | null> = [];
    session.on("change", (userCtx: { name: string | null }) => names.push(userCtx.name));
    await new Promise<void>((ok, fail) => session.login("testuser", "pw", (err: unknown) => (err ? fail(err) : ok())));
    const info = await new Promise<{ userCtx: { name: string; roles: string[] } }>((ok, fail) =>
      session.info((err: unknown, i: never) => (err ? fail(err) : ok(i))),
    );
    expect(info.userCtx).toMatchObject({ name: "Testuser", roles: ["player"] });
    await new Promise<void>((ok, fail) => session.logout((err: unknown) => (err ? fail(err) : ok())));
    expect(names).toEqual(["Testuser", null]);
    session.dispose();
  });

  it("Clerk: attributes as Dates, touch/end/remove resolve session resources", async () => {
    const { Session } = await import("@sessiongate/client");
    const session = new Session({ host: gate.http });
    await session.login({ username: "nk", password: "pw" });
    for (const a of ["lastActiveAt", "abandonAt", "expireAt", "updatedAt"] as const) {
      expect(session[a]).toBeInstanceOf(Date);
    }
    expect((await session.touch()).status).toBe("active");
    const other = new Session({ host: gate.http });
    await other.login({ username: "nk", password: "pw" });
    expect((await other.remove()).status).toBe("removed");
    expect((await session.end()).status).toBe("ended");
    expect(session.status).toBe("ended");
    session.dispose();
    other.dispose();
  });

  it("SessionKit: storage, login, restore, restoreAll, getSessions, logout", async () => {
    const { SessionKit } = await import("@sessiongate/client");
    const data = new Map<string, string>();
    const storage = {
      write: async (key: string, value: string) => void data.set(key, value),
      read: async (key: string) => data.get(key) ?? null,
      remove: async (key: string) => void data.delete(key),
    };
    const sessionKit = new SessionKit({ host: gate.http, storage });
    const { session } = await sessionKit.login({ username: "nk", password: "pw" });
    const again = new SessionKit({ host: gate.http, storage });
    expect((await again.restore())?.id).toBe(session.id);
    expect((await again.restoreAll()).map((s) => s.id)).toEqual([session.id]);
    expect((await again.getSessions()).some((s) => s.id === session.id)).toBe(true);
    await again.logout();
    expect(await new SessionKit({ host: gate.http, storage }).restore()).toBeUndefined();
    sessionKit.dispose();
    again.dispose();
  });

  it("Nakama: user_id, username, isexpired(Date.now() / 1000), vars", async () => {
    const { Session } = await import("@sessiongate/client");
    const session = new Session({ host: gate.http });
    await session.login({ username: "nk", password: "pw", vars: { key: "value" } });
    expect([session.user_id, session.username]).toEqual(["u-nk", "nk"]);
    expect(session.isexpired(Date.now() / 1000)).toBe(false);
    expect(session.isexpired((session.expires_at ?? 0) + 1)).toBe(true);
    expect(session.vars).toEqual({ key: "value", tier: "gold" });
    session.dispose();
  });
});
