/**
 * `Auth` and `Connection`, for those who hold the ticket themselves (enjine's
 * second form): `Auth` gets tickets, `Connection` uses one for a gateway
 * and/or a controller.
 */

import { Controller, type RequestOptions } from "./controller.js";
import type { Listener } from "./emitter.js";
import { SessionGateError } from "./errors.js";
import { Gateway, type ReconnectOptions, type WebSocketCtor } from "./gateway.js";
import { bases, call, type FetchLike, join } from "./http.js";
import type {
  InfoResponse,
  LoginRequest,
  LoginResponse,
  RefreshResponse,
  SessionListResponse,
  SessionOnlyResponse,
} from "./types.js";

/** Where names map to paths; SPEC's defaults are `/gateway/<name>`, `/controller/<name>`, `/_session`. */
export interface Paths {
  session?: string;
  gateway?: Record<string, string> | ((name: string) => string);
  controller?: Record<string, string> | ((name: string) => string);
}

export function gatewayPath(paths: Paths | undefined, name: string): string {
  const p = paths?.gateway;
  return (typeof p === "function" ? p(name) : p?.[name]) ?? `/gateway/${name}`;
}

export function controllerPath(paths: Paths | undefined, name: string): string {
  const p = paths?.controller;
  return (typeof p === "function" ? p(name) : p?.[name]) ?? `/controller/${name}`;
}

export function defaultFetch(given: FetchLike | undefined): FetchLike {
  if (given) return given;
  const f = (globalThis as { fetch?: FetchLike }).fetch;
  if (!f) throw new SessionGateError("network_error", "no fetch implementation: pass the fetch option");
  // Called unbound, the browser's fetch throws "Illegal invocation".
  return (input, init) => f(input, init);
}

export interface AuthOptions {
  host?: string;
  /** Accepted for enjine's shape; `Auth` talks to `/_session` only. */
  gateway?: string;
  controller?: string;
  paths?: Paths;
  fetch?: FetchLike;
  /** Send the gate's cookie too (browsers). */
  cookie?: boolean;
}

/** The session API for a ticket you keep yourself. */
export class Auth {
  readonly base: string;
  #fetch: FetchLike;
  #cookie: boolean;

  constructor(opts: AuthOptions = {}) {
    this.base = join(bases(opts.host).http, opts.paths?.session ?? "/_session");
    this.#fetch = defaultFetch(opts.fetch);
    this.#cookie = opts.cookie ?? false;
  }

  async #call<T>(method: string, path: string, ticket: string | null, body?: unknown): Promise<T> {
    const a = await call(this.#fetch, method, join(this.base, path), { ticket, cookie: this.#cookie, body });
    return a.body as T;
  }

  /** Resolves with the ticket (enjine's `auth.login`); `loginFull` gives the whole answer. */
  async login(args: LoginRequest): Promise<string> {
    return (await this.loginFull(args)).ticket;
  }

  loginFull(args: LoginRequest): Promise<LoginResponse> {
    const body: LoginRequest = { username: args.username, password: args.password };
    if (args.vars) body.vars = args.vars;
    return this.#call<LoginResponse>("POST", "/login", null, body);
  }

  info(ticket: string): Promise<InfoResponse> {
    return this.#call<InfoResponse>("GET", "", ticket);
  }
  touch(ticket: string): Promise<SessionOnlyResponse> {
    return this.#call<SessionOnlyResponse>("POST", "/touch", ticket);
  }
  refresh(ticket: string): Promise<RefreshResponse> {
    return this.#call<RefreshResponse>("POST", "/refresh", ticket);
  }
  async logout(ticket: string): Promise<void> {
    await this.#call("POST", "/logout", ticket);
  }
  list(ticket: string): Promise<SessionListResponse> {
    return this.#call<SessionListResponse>("GET", "/list", ticket);
  }
  end(ticket: string, id: string): Promise<SessionOnlyResponse> {
    return this.#call<SessionOnlyResponse>("POST", `/${encodeURIComponent(id)}/end`, ticket);
  }
  async remove(ticket: string, id: string): Promise<void> {
    await this.#call("DELETE", `/${encodeURIComponent(id)}`, ticket);
  }
}

export interface ConnectionOptions {
  /** The ticket, or a function giving a fresh one for each (re)connection. */
  ticket?: string | (() => string | Promise<string>);
  host?: string;
  gateway?: string;
  controller?: string;
  paths?: Paths;
  fetch?: FetchLike;
  WebSocket?: WebSocketCtor;
  reconnect?: ReconnectOptions;
  queueSize?: number;
  /** Send the gate's cookie (browsers); default: only when no ticket is given. */
  cookie?: boolean;
}

/** One gateway and/or one controller under a ticket you hold. */
export class Connection {
  readonly gateway: Gateway | null;
  readonly controller: Controller | null;

  constructor(opts: ConnectionOptions) {
    const b = bases(opts.host);
    const t = opts.ticket;
    const ticket = async (): Promise<string | null> => (typeof t === "function" ? await t() : (t ?? null));
    const cookie = opts.cookie ?? t === undefined;
    this.gateway = opts.gateway
      ? new Gateway({
          url: join(b.ws, gatewayPath(opts.paths, opts.gateway)),
          ticket,
          WebSocket: opts.WebSocket,
          reconnect: opts.reconnect,
          queueSize: opts.queueSize,
        })
      : null;
    this.controller = opts.controller
      ? new Controller({
          url: join(b.http, controllerPath(opts.paths, opts.controller)),
          fetch: defaultFetch(opts.fetch),
          auth: async () => ({ ticket: await ticket(), cookie }),
        })
      : null;
    this.gateway?.connect();
  }

  #gw(): Gateway {
    if (!this.gateway) throw new SessionGateError("bad_request", "this connection has no gateway");
    return this.gateway;
  }
  #ctl(): Controller {
    if (!this.controller) throw new SessionGateError("bad_request", "this connection has no controller");
    return this.controller;
  }

  on(event: string, listener: Listener): this {
    this.#gw().on(event, listener);
    return this;
  }
  once(event: string, listener: Listener): this {
    this.#gw().once(event, listener);
    return this;
  }
  off(event: string, listener?: Listener): this {
    this.#gw().off(event, listener);
    return this;
  }
  emit(event: string, data?: unknown): this {
    this.#gw().emit(event, data);
    return this;
  }
  close(code?: number, reason?: string): void {
    this.gateway?.close(code, reason);
  }

  get<T = unknown>(path?: string, opts?: RequestOptions): Promise<T> {
    return this.#ctl().get<T>(path, opts);
  }
  post<T = unknown>(path?: string, body?: unknown, opts?: RequestOptions): Promise<T> {
    return this.#ctl().post<T>(path, body, opts);
  }
  put<T = unknown>(path?: string, body?: unknown, opts?: RequestOptions): Promise<T> {
    return this.#ctl().put<T>(path, body, opts);
  }
  patch<T = unknown>(path?: string, body?: unknown, opts?: RequestOptions): Promise<T> {
    return this.#ctl().patch<T>(path, body, opts);
  }
  delete<T = unknown>(path?: string, opts?: RequestOptions): Promise<T> {
    return this.#ctl().delete<T>(path, opts);
  }
}
