/**
 * The test harness: a private redis-server, the built-in echo upstreams and
 * the real `sessiongate` binary (this repository's debug build): the servers
 * on free loopback ports, the gate on port 0 (it names its ports in its
 * `--ready-file`), with readiness probes instead of sleeps.
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../../..");
export const BIN = process.env.SESSIONGATE_BIN ?? join(REPO, "target/debug/sessiongate");
export const ADMIN_TOKEN = "admin-token-for-tests";

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a ? ok(a.port) : fail(new Error("no port"))));
    });
  });
}

/** Retries `probe` until it resolves true or `ms` pass. */
export async function until(what: string, probe: () => Promise<boolean> | boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await probe()) return;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
}

function tcpUp(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      ok(true);
    });
    s.once("error", () => ok(false));
  });
}

function redisPing(port: number): Promise<boolean> {
  return new Promise((ok) => {
    const s = connect(port, "127.0.0.1");
    let got = "";
    s.once("connect", () => s.write("PING\r\n"));
    s.on("data", (d) => {
      got += d.toString();
      if (got.includes("\r\n")) {
        s.destroy();
        ok(got.startsWith("+PONG"));
      }
    });
    s.once("error", () => ok(false));
  });
}

function exited(p: ChildProcess): Promise<void> {
  return new Promise((ok) => {
    if (p.exitCode !== null || p.signalCode !== null) ok();
    else p.once("exit", () => ok());
  });
}

export class Redis {
  proc: ChildProcess | null = null;
  constructor(readonly port: number) {}
  static async spawn(): Promise<Redis> {
    const r = new Redis(await freePort());
    await r.start();
    return r;
  }
  async start(): Promise<void> {
    this.proc = spawn(
      "redis-server",
      ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      {
        stdio: "ignore",
      },
    );
    await until("redis", () => redisPing(this.port));
  }
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p) return;
    p.kill("SIGKILL");
    await exited(p);
  }
}

export class Echo {
  proc: ChildProcess | null = null;
  constructor(
    readonly http: number,
    readonly ws: number,
  ) {}
  static async spawn(): Promise<Echo> {
    const e = new Echo(await freePort(), await freePort());
    e.proc = spawn(BIN, ["echo", "--http", `127.0.0.1:${e.http}`, "--ws", `127.0.0.1:${e.ws}`], { stdio: "ignore" });
    await until("echo upstreams", async () => (await tcpUp(e.http)) && (await tcpUp(e.ws)));
    return e;
  }
  async stop(): Promise<void> {
    this.proc?.kill("SIGKILL");
    if (this.proc) await exited(this.proc);
  }
}

/**
 * One argon2id hash for every test user (the password is `pw`), with tiny
 * parameters (m=8, t=1, p=1) so a login costs no hashing time: the gate
 * verifies whatever parameters a PHC string names.
 */
export function passwordHash(): string {
  return "$argon2id$v=19$m=8,t=1,p=1$/XiL7t2+Tz9JjJaVkfEtIw$6pk0gR1QFYOoJj2QtYNp/V06Hp5EZT2GTMvrMMgDc1c";
}

export interface GateOptions {
  redis: Redis;
  echo: Echo;
  users: string[];
  /** YAML for `login.rate_limit`. */
  rateLimit?: string;
  ttl?: string;
  /** More gateway/controller names routed to the echo upstreams. */
  names?: string[];
}

export class Gate {
  proc: ChildProcess | null = null;
  readonly dir: string;
  readonly config: string;
  readonly readyFile: string;
  log = "";
  /** The bound ports: 0 until the first start reads them from the ready file. */
  port = 0;
  admin = 0;
  private readonly render: (port: number, admin: number) => string;
  constructor(opts: GateOptions) {
    this.dir = mkdtempSync(join(tmpdir(), "sg-sdk-"));
    const users = opts.users
      .map(
        (u) =>
          `  - username: ${u}\n    password_hash: "${passwordHash()}"\n    id: u-${u}\n    name: ${u[0]?.toUpperCase()}${u.slice(1)}\n    roles: [player]\n    vars: {tier: gold}\n`,
      )
      .join("");
    writeFileSync(join(this.dir, "users.yaml"), `users:\n${users}`);
    const secret = execFileSync(BIN, ["keygen"]).toString().trim();
    this.config = join(this.dir, "sessiongate.yaml");
    this.readyFile = join(this.dir, "ready.json");
    this.render = (port, admin) =>
      `listen: ["127.0.0.1:${port}"]
admin:
  listen: "127.0.0.1:${admin}"
  token: ${ADMIN_TOKEN}
server:
  grace_period: 1s
  shutdown_timeout: 1s
store:
  kind: redis
  url: redis://127.0.0.1:${opts.redis.port}/0
  timeout: 200ms
tickets:
  keys:
    - id: k1
      secret: ${secret}
  cookie: {name: sg_ticket, secure: false}
sessions:
  ttl: ${opts.ttl ?? "1h"}
  idle_timeout: 30m
login:
  users_file: ${join(this.dir, "users.yaml")}
  rate_limit: ${opts.rateLimit ?? "{per_ip: 10000/min, per_user: 1000/min}"}
routes:
  - name: chat
    kind: gateway
    path: /gateway/chat
    upstreams: ["127.0.0.1:${opts.echo.ws}"]
    auth: required
  - name: echo
    kind: controller
    path: /controller/echo
    strip_prefix: true
    upstreams: ["127.0.0.1:${opts.echo.http}"]
    auth: required
${(opts.names ?? [])
  .map(
    (n) => `  - name: gw-${n}
    kind: gateway
    path: /gateway/${n}
    upstreams: ["127.0.0.1:${opts.echo.ws}"]
    auth: required
  - name: ctl-${n}
    kind: controller
    path: /controller/${n}
    strip_prefix: true
    upstreams: ["127.0.0.1:${opts.echo.http}"]
    auth: required
`,
  )
  .join("")}`;
    // Port 0: the gate picks its ports and names them in the ready file.
    writeFileSync(this.config, this.render(0, 0));
  }

  static async spawn(opts: GateOptions): Promise<Gate> {
    const g = new Gate(opts);
    await g.start();
    return g;
  }

  get http(): string {
    return `http://127.0.0.1:${this.port}`;
  }
  get ws(): string {
    return `ws://127.0.0.1:${this.port}`;
  }
  get adminUrl(): string {
    return `http://127.0.0.1:${this.admin}`;
  }

  async start(): Promise<void> {
    rmSync(this.readyFile, { force: true });
    const p = spawn(BIN, ["run", "-c", this.config, "--ready-file", this.readyFile], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, SESSIONGATE_LOG: "warn" },
    });
    p.stderr?.on("data", (d) => {
      this.log += d.toString();
    });
    this.proc = p;
    await until("the ready file", () => {
      if (p.exitCode !== null) throw new Error(`gate exited: ${this.log}`);
      return existsSync(this.readyFile);
    });
    const ready = JSON.parse(readFileSync(this.readyFile, "utf8")) as { listen: string[]; admin: string };
    const port = (addr: string | undefined) => Number(addr?.split(":").pop());
    if (this.port === 0) {
      this.port = port(ready.listen[0]);
      this.admin = port(ready.admin);
      // A restart (stop, then start) comes back on the same ports.
      writeFileSync(this.config, this.render(this.port, this.admin));
    }
    await until("the gate", async () => {
      if (p.exitCode !== null) throw new Error(`gate exited: ${this.log}`);
      const r = await fetch(`${this.adminUrl}/readyz`).catch(() => null);
      return r?.status === 200 && (await tcpUp(this.port));
    });
  }

  /** SIGTERM, then wait for the exit (open WebSockets get Close 1001). */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p) return;
    p.kill("SIGTERM");
    await exited(p);
  }

  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** One admin API call. */
  async adminCall(method: string, path: string): Promise<{ status: number; body: unknown }> {
    const r = await fetch(`${this.adminUrl}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : undefined };
  }
}

/** A fetch that records every URL it was asked for. */
export function countingFetch(): { fetch: typeof fetch; calls: string[] } {
  const calls: string[] = [];
  const f: typeof fetch = (input, init) => {
    calls.push(`${init?.method ?? "GET"} ${String(input)}`);
    return fetch(input, init);
  };
  return { fetch: f, calls };
}
