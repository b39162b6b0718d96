/**
 * `Session`: one object holding one session's ticket (or the browser's
 * cookie) for its gateways and controllers. Every change of the session is
 * one `change` event; refresh is one promise shared by every caller (and,
 * through Web Locks, every tab).
 */

import { controllerPath, defaultFetch, gatewayPath, type Paths } from "./connection.js";
import { Controller } from "./controller.js";
import { Emitter } from "./emitter.js";
import { SessionGateError } from "./errors.js";
import { Gateway, type ReconnectOptions, type WebSocketCtor } from "./gateway.js";
import { type Bases, bases, call, type FetchLike, join } from "./http.js";
import { SessionResource } from "./resource.js";
import { resolveStorage, type StorageOption, type TicketStorage } from "./storage.js";
import type {
  InfoResponse,
  LoginRequest,
  LoginResponse,
  RefreshResponse,
  SessionListResponse,
  SessionOnlyResponse,
  Status,
  WireSession,
  WireUser,
} from "./types.js";

export interface SessionOptions {
  /** `ws(s)://` or `http(s)://` origin of the gate (default: the page's). */
  host?: string;
  /** Gateways to add at once (enjine's `gateway: 'auth'`). */
  gateway?: string | string[];
  /** Controllers to add at once. */
  controller?: string | string[];
  paths?: Paths;
  /** Default: `"cookie"` in browsers, `"memory"` elsewhere. */
  storage?: StorageOption;
  /** Storage key, BroadcastChannel and lock name (default `"sessiongate"`). */
  key?: string;
  fetch?: FetchLike;
  /** A WebSocket class where there is no global one (Node 20: the `ws` package). */
  WebSocket?: WebSocketCtor;
  /** Refresh this many seconds before the ticket's `exp` (default 60). */
  refreshBefore?: number;
  /** The clock, in ms since the epoch (default `Date.now`). */
  now?: () => number;
  reconnect?: ReconnectOptions;
  /** Emits kept per gateway while reconnecting (default 100). */
  queueSize?: number;
}

/** kanso's user context; `name` is null when there is no live session. */
export interface UserCtx {
  name: string | null;
  id: string | null;
  roles: string[];
}

export type ChangeReason = "login" | "logout" | "refresh" | "info" | "ended" | "restore" | "tab";

/** The `change` payload: the status and `userCtx`, which it also spreads (so kanso's `userCtx.name` reads work). */
export interface ChangeEvent extends UserCtx {
  status: Status | null;
  userCtx: UserCtx;
  session: SessionResource | null;
  user: WireUser | null;
  reason: ChangeReason;
}

export interface InfoResult {
  userCtx: UserCtx;
  session: SessionResource | null;
  user: WireUser | null;
  info: { authenticated: "bearer" | "cookie" | null };
}

export interface LoginResult {
  /** Null in cookie mode: the ticket stays in the HttpOnly cookie. */
  ticket: string | null;
  session: SessionResource;
  user: WireUser;
  userCtx: UserCtx;
}

export interface LoginArgs {
  username: string;
  password: string;
  vars?: Record<string, string>;
}

export interface AddArgs {
  gateway?: string | string[];
  controller?: string | string[];
  /** Another host for the same ticket. */
  host?: string;
}

type Callback<T> = (err: unknown, result?: T) => void;

interface Saved {
  current: string | null;
  sessions: Record<string, { ticket: string; username: string | null }>;
}

interface TabMessage {
  type: "refresh" | "ended" | "login";
  id: string;
  session?: WireSession;
  status?: Status;
}

const ANONYMOUS: UserCtx = Object.freeze({ name: null, id: null, roles: [] as string[] }) as UserCtx;

/** Node-style callbacks (kanso) beside promises: with one, the promise never rejects. */
function settle<T>(p: Promise<T>, cb: Callback<T> | undefined): Promise<T> {
  if (!cb) return p;
  return p.then(
    (r) => {
      cb(null, r);
      return r;
    },
    (e) => {
      cb(e);
      return undefined as T;
    },
  );
}

function names(x: string | string[] | undefined): string[] {
  return x === undefined ? [] : Array.isArray(x) ? x : [x];
}

export class Session extends Emitter {
  /** `session.gateway.<name>`: on/off/emit/close. */
  readonly gateway: Record<string, Gateway> = {};
  /** `session.controller.<name>`: get/post/put/patch/delete. */
  readonly controller: Record<string, Controller> = {};
  readonly bases: Bases;

  #opts: SessionOptions;
  #fetch: FetchLike;
  #storage: TicketStorage | null;
  #key: string;
  #now: () => number;
  #refreshBefore: number;
  #ticket: string | null = null;
  #record: SessionResource | null = null;
  #user: WireUser | null = null;
  #username: string | null = null;
  #epoch = 0;
  #refreshing: Promise<SessionResource> | null = null;
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** The wait before the timer tries a failed refresh again (0: the last one worked). */
  #retryDelay = 0;
  #channel: BroadcastChannel | null = null;
  #lastChange = "";
  /** The record id and status `#dead` last acted on, so a 4401 after a local logout is not acted on twice. */
  #deadDone = "";

  constructor(opts: SessionOptions = {}) {
    super();
    this.#opts = opts;
    this.bases = bases(opts.host);
    this.#fetch = defaultFetch(opts.fetch);
    this.#storage = resolveStorage(opts.storage);
    this.#key = opts.key ?? "sessiongate";
    this.#now = opts.now ?? Date.now;
    this.#refreshBefore = opts.refreshBefore ?? 60;
    const shared = this.#storage === null || opts.storage === "localStorage";
    const BC = (globalThis as { BroadcastChannel?: typeof BroadcastChannel }).BroadcastChannel;
    // Tabs share the cookie (or localStorage): they hear of each other's refresh and end.
    if (shared && BC && typeof (globalThis as { document?: unknown }).document !== "undefined") {
      this.#channel = new BC(this.#key);
      this.#channel.onmessage = (ev: MessageEvent) => this.#fromTab(ev.data as TabMessage);
    }
    this.add({ gateway: opts.gateway, controller: opts.controller });
  }

  // ---- attributes -------------------------------------------------------

  /** `"cookie"` or `"bearer"`. */
  get mode(): "cookie" | "bearer" {
    return this.#storage ? "bearer" : "cookie";
  }
  /** The current session's record (null before login or restore). */
  get session(): SessionResource | null {
    return this.#record;
  }
  get user(): WireUser | null {
    return this.#user;
  }
  get id(): string | null {
    return this.#record?.id ?? null;
  }
  get status(): Status | null {
    return this.#record?.status ?? null;
  }
  get userId(): string | null {
    return this.#record?.userId ?? null;
  }
  get user_id(): string | null {
    return this.userId;
  }
  /** The name logged in with, else the user's display name or id. */
  get username(): string | null {
    return this.#username ?? (this.#user ? this.#user.name || this.#user.id : null);
  }
  get name(): string | null {
    return this.#user?.name ?? null;
  }
  get roles(): string[] {
    return this.#user?.roles ?? [];
  }
  get vars(): Readonly<Record<string, string>> {
    return this.#record?.vars ?? {};
  }
  get createdAt(): Date | null {
    return this.#record?.createdAt ?? null;
  }
  get lastActiveAt(): Date | null {
    return this.#record?.lastActiveAt ?? null;
  }
  get expireAt(): Date | null {
    return this.#record?.expireAt ?? null;
  }
  get abandonAt(): Date | null {
    return this.#record?.abandonAt ?? null;
  }
  get updatedAt(): Date | null {
    return this.#record?.updatedAt ?? null;
  }
  get expires_at(): number | null {
    return this.#record ? this.#record.expires_at : null;
  }
  get created_at(): number | null {
    return this.#record ? Math.floor(this.#record.createdAt.getTime() / 1000) : null;
  }
  /** The bearer ticket (null in cookie mode: the cookie is never readable by script). */
  get ticket(): string | null {
    return this.#ticket;
  }
  get token(): string | null {
    return this.#ticket;
  }
  get userCtx(): UserCtx {
    return this.#active() ? this.#ctx() : { ...ANONYMOUS, roles: [] };
  }
  get authenticated(): boolean {
    return this.#active();
  }

  /** Whether the session is past `expireAt` at `now` (seconds since the epoch); true without one. */
  isexpired(now: number = this.#now() / 1000): boolean {
    return this.#record ? this.#record.isexpired(now) : true;
  }

  // ---- connections ------------------------------------------------------

  /** Adds gateways and controllers under this session's ticket. */
  add(args: AddArgs): this {
    const b = args.host ? bases(args.host) : this.bases;
    for (const name of names(args.gateway)) {
      this.gateway[name]?.close();
      const gw = new Gateway({
        url: join(b.ws, gatewayPath(this.#opts.paths, name)),
        ticket: (check) => this.#gatewayTicket(check),
        WebSocket: this.#opts.WebSocket,
        reconnect: this.#opts.reconnect,
        queueSize: this.#opts.queueSize,
        onEnded: (status) => this.#dead(status, "ended"),
      });
      this.gateway[name] = gw;
      if (this.#active()) gw.connect();
    }
    for (const name of names(args.controller)) {
      this.controller[name] = new Controller({
        url: join(b.http, controllerPath(this.#opts.paths, name)),
        fetch: this.#fetch,
        auth: () => this.#fresh(),
        onError: (err) => this.#refused(err),
      });
    }
    return this;
  }

  // ---- the session API ----------------------------------------------------

  /** Restores from storage or the cookie. Never rejects (it is often not awaited): resolves null without a live session. */
  init(): Promise<SessionResource | null> {
    return this.restore().then(
      (r) => r ?? null,
      () => null,
    );
  }

  login(args: LoginArgs, cb?: Callback<LoginResult>): Promise<LoginResult>;
  login(username: string, password: string, cb?: Callback<LoginResult>): Promise<LoginResult>;
  login(
    username: string,
    password: string,
    vars: Record<string, string>,
    cb?: Callback<LoginResult>,
  ): Promise<LoginResult>;
  login(
    a: LoginArgs | string,
    b?: string | Callback<LoginResult>,
    c?: Record<string, string> | Callback<LoginResult>,
    d?: Callback<LoginResult>,
  ): Promise<LoginResult> {
    let args: LoginArgs;
    let cb: Callback<LoginResult> | undefined;
    if (typeof a === "string") {
      args = { username: a, password: typeof b === "string" ? b : "" };
      if (typeof c === "function") cb = c;
      else {
        if (c) args.vars = c;
        cb = d;
      }
    } else {
      args = a;
      cb = typeof b === "function" ? b : undefined;
    }
    return settle(this.#login(args), cb);
  }

  async #login(args: LoginArgs): Promise<LoginResult> {
    const body: LoginRequest = { username: args.username, password: args.password };
    if (args.vars) body.vars = args.vars;
    ++this.#epoch;
    const a = await call(this.#fetch, "POST", this.#url("/login"), { cookie: this.#cookie(), body });
    const r = a.body as LoginResponse;
    this.#username = args.username;
    const ticket = this.#storage ? r.ticket : null;
    await this.#save(r.session.id, ticket);
    this.#set(r.session, r.user, ticket, "login");
    this.#tab({ type: "login", id: r.session.id });
    return { ticket, session: this.#resource(r.session, r.user), user: r.user, userCtx: this.#ctx() };
  }

  /** Logs out (status ended). Given another session (or its id), ends that one instead. */
  logout(which?: SessionResource | string | Callback<void>, cb?: Callback<void>): Promise<void> {
    if (typeof which === "function") return settle(this.#logout(undefined), which);
    const id = typeof which === "string" ? which : which?.id;
    return settle(this.#logout(id), cb);
  }

  async #logout(id: string | undefined): Promise<void> {
    if (id !== undefined && id !== this.id) {
      await this.end(id);
      return;
    }
    if (!this.#record && !this.#ticket && this.#storage) return;
    try {
      await this.#api("POST", "/logout", undefined, false);
    } catch (err) {
      // Already over, or never there: logged out all the same.
      if (!(err instanceof SessionGateError && err.status === 401)) throw err;
    }
    // The gate's 4401 to this client's own sockets may have ended it already.
    if (this.#record?.status === "active") this.#dead("ended", "logout");
    else if (!this.#record) this.#forget();
  }

  /** The current user and session; with none alive, `userCtx.name` is null. */
  info(cb?: Callback<InfoResult>): Promise<InfoResult> {
    return settle(this.#info(), cb);
  }

  async #info(): Promise<InfoResult> {
    if (this.#storage && !this.#ticket) return this.#anonymousInfo();
    const epoch = this.#epoch;
    try {
      const a = await this.#api("GET", "", undefined, false);
      const r = a.body as InfoResponse;
      if (epoch === this.#epoch) this.#set(r.session, r.user, this.#ticket, "info");
      return {
        userCtx: this.#ctxOf(r.user),
        session: this.#resource(r.session, r.user),
        user: r.user,
        info: { authenticated: this.mode },
      };
    } catch (err) {
      if (err instanceof SessionGateError && err.status === 401) return this.#anonymousInfo();
      throw err;
    }
  }

  /** Records activity (lastActiveAt now). */
  async touch(): Promise<SessionResource> {
    const a = await this.#api("POST", "/touch");
    const r = a.body as SessionOnlyResponse;
    this.#set(r.session, this.#user, this.#ticket, "info");
    return this.#resource(r.session, this.#user ?? undefined);
  }

  /** A new ticket now; one request however many callers (and tabs) ask at once. */
  refresh(): Promise<SessionResource> {
    return this.#refresh(true);
  }

  /** Ends one of your sessions (default: this one); status ended. */
  async end(id?: string): Promise<SessionResource> {
    const sid = id ?? this.#need();
    const a = await this.#api("POST", `/${encodeURIComponent(sid)}/end`);
    const r = a.body as SessionOnlyResponse;
    if (sid === this.id) this.#dead("ended", "logout");
    return this.#resource(r.session);
  }

  /** Removes one of your sessions (default: this one); status removed, out of the list. */
  async remove(id?: string): Promise<SessionResource> {
    const sid = id ?? this.#need();
    const known = sid === this.id ? this.#record : null;
    await this.#api("DELETE", `/${encodeURIComponent(sid)}`);
    if (sid === this.id) this.#dead("removed", "logout");
    await this.#unsave(sid);
    if (known) return known.withStatus("removed");
    const now = new Date(this.#now()).toISOString();
    return this.#resource({
      id: sid,
      userId: this.userId ?? "",
      status: "removed",
      vars: {},
      createdAt: now,
      lastActiveAt: now,
      expireAt: now,
      abandonAt: now,
      updatedAt: now,
    });
  }

  /** Your sessions, newest first (removed ones left out). */
  async list(): Promise<SessionResource[]> {
    const a = await this.#api("GET", "/list");
    return (a.body as SessionListResponse).sessions.map((s) => this.#resource(s));
  }

  /** SessionKit's name for `list()`. */
  getSessions(): Promise<SessionResource[]> {
    return this.list();
  }

  /**
   * Restores the most recently used session, or the stored one with `id`
   * (bearer mode keeps every session logged in here); resolves undefined
   * when there is none alive.
   */
  async restore(id?: string): Promise<SessionResource | undefined> {
    const epoch = ++this.#epoch;
    if (this.#storage) {
      const saved = await this.#load();
      const sid = id ?? saved.current;
      const entry = sid ? saved.sessions[sid] : undefined;
      if (!sid || !entry) return undefined;
      const alive = await this.#check(entry.ticket);
      if (epoch !== this.#epoch) return this.#record ?? undefined;
      if (!alive) {
        await this.#unsave(sid);
        if (sid === this.id) this.#forget();
        return undefined;
      }
      this.#username = entry.username;
      await this.#save(sid, entry.ticket);
      this.#set(alive.session, alive.user, entry.ticket, "restore");
      return this.#resource(alive.session, alive.user);
    }
    const alive = await this.#check(null);
    if (epoch !== this.#epoch) return this.#record ?? undefined;
    if (!alive) {
      if (this.#record) this.#forget();
      return undefined;
    }
    this.#set(alive.session, alive.user, null, "restore");
    return id === undefined || id === alive.session.id ? this.#resource(alive.session, alive.user) : undefined;
  }

  /** Every stored session still alive (dead ones are dropped from storage); the current one stays current. */
  async restoreAll(): Promise<SessionResource[]> {
    if (!this.#storage) {
      const r = await this.restore();
      return r ? [r] : [];
    }
    const saved = await this.#load();
    const out: SessionResource[] = [];
    for (const [sid, entry] of Object.entries(saved.sessions)) {
      const alive = await this.#check(entry.ticket);
      if (alive) out.push(this.#resource(alive.session, alive.user));
      else await this.#unsave(sid);
    }
    if (!this.#active() && saved.current && out.some((r) => r.id === saved.current)) {
      await this.restore(saved.current);
    }
    return out;
  }

  /** Stops timers, sockets and the tab channel (the session itself stays as it is). */
  dispose(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    for (const gw of Object.values(this.gateway)) gw.close();
    this.#channel?.close();
    this.#channel = null;
  }

  // ---- internals ----------------------------------------------------------

  #url(path: string): string {
    return join(join(this.bases.http, this.#opts.paths?.session ?? "/_session"), path);
  }

  #cookie(): boolean {
    return this.#storage === null;
  }

  #active(): boolean {
    return this.#record?.status === "active";
  }

  #need(): string {
    const id = this.id;
    if (!id) throw new SessionGateError("no_session", "there is no session: log in first");
    return id;
  }

  #resource(w: WireSession, user?: WireUser): SessionResource {
    return new SessionResource(w, this, user);
  }

  #ctxOf(u: WireUser): UserCtx {
    return { name: u.name || u.id, id: u.id, roles: [...u.roles] };
  }

  #ctx(): UserCtx {
    return this.#user && this.#active() ? this.#ctxOf(this.#user) : { ...ANONYMOUS, roles: [] };
  }

  #anonymousInfo(): InfoResult {
    return { userCtx: { ...ANONYMOUS, roles: [] }, session: null, user: null, info: { authenticated: null } };
  }

  /** One `/_session` call with this session's credentials; refreshes first when due. */
  async #api(method: string, path: string, body?: unknown, fresh = true) {
    const st = this.#record?.status;
    if (fresh && st && st !== "active") {
      // Over already: say so as the gate would, without a round trip.
      throw new SessionGateError(`session_${st}`, `session ${st}`, 401);
    }
    const creds = fresh ? await this.#fresh() : { ticket: this.#ticket, cookie: this.#cookie() };
    const used = this.#ticket;
    try {
      return await call(this.#fetch, method, this.#url(path), { ...creds, body });
    } catch (err) {
      if (err instanceof SessionGateError && used === this.#ticket) this.#refused(err);
      throw err;
    }
  }

  /** Acts on a refusal of any call: 401 `session_*` ends it, other 401s forget it. */
  #refused(err: SessionGateError): void {
    if (err.sessionEnded) this.#dead(err.code.slice("session_".length) as Status, "ended");
    else if (err.status === 401 && (err.code === "missing_ticket" || err.code === "invalid_ticket")) {
      if (this.#active()) this.#dead("expired", "ended");
    }
  }

  /** GET /_session with a given ticket (null: the cookie); null when it is not alive. */
  async #check(ticket: string | null): Promise<InfoResponse | null> {
    try {
      const a = await call(this.#fetch, "GET", this.#url(""), { ticket, cookie: this.#cookie() });
      return a.body as InfoResponse;
    } catch (err) {
      if (err instanceof SessionGateError && err.status === 401) return null;
      throw err;
    }
  }

  #dueAt(): number {
    return this.#record ? this.#record.expireAt.getTime() - this.#refreshBefore * 1000 : Number.POSITIVE_INFINITY;
  }

  /** Credentials for one call, refreshed first when the ticket is due. */
  async #fresh(): Promise<{ ticket: string | null; cookie: boolean }> {
    if (this.#active() && this.#now() >= this.#dueAt()) {
      try {
        await this.#refresh(false);
      } catch (err) {
        // The old ticket may still be good until `exp`; the call will tell.
        if (err instanceof SessionGateError && err.sessionEnded) throw err;
      }
    }
    return { ticket: this.#ticket, cookie: this.#cookie() };
  }

  #refresh(force: boolean): Promise<SessionResource> {
    if (!this.#refreshing) {
      this.#refreshing = this.#refreshLocked(force).finally(() => {
        this.#refreshing = null;
      });
    }
    return this.#refreshing;
  }

  async #refreshLocked(force: boolean): Promise<SessionResource> {
    const startedAt = this.#record?.expireAt.getTime() ?? 0;
    const run = async (): Promise<SessionResource> => {
      // Another tab may have refreshed while this one waited for the lock.
      this.#adoptShared();
      const rec = this.#record;
      if (rec && rec.expireAt.getTime() > startedAt && rec.status === "active") return rec;
      if (rec && !force && this.#now() < this.#dueAt()) return rec;
      const a = await this.#api("POST", "/refresh", undefined, false);
      const r = a.body as RefreshResponse;
      const ticket = this.#storage ? r.ticket : null;
      await this.#save(r.session.id, ticket);
      this.#set(r.session, this.#user, ticket, "refresh");
      this.#share(r.session);
      this.#tab({ type: "refresh", id: r.session.id, session: r.session });
      return this.#resource(r.session, this.#user ?? undefined);
    };
    const locks = (globalThis as { navigator?: { locks?: LockManager } }).navigator?.locks;
    if (this.#channel && locks) return locks.request(`${this.#key}:refresh`, run);
    return run();
  }

  /** Cross-tab: the last refresh any tab made, kept where every tab reads it synchronously. */
  #share(s: WireSession): void {
    if (!this.#channel) return;
    try {
      globalThis.localStorage?.setItem(`${this.#key}:refreshed`, JSON.stringify(s));
    } catch {
      // private mode: the BroadcastChannel message still goes out
    }
  }

  #adoptShared(): void {
    if (!this.#channel) return;
    let s: WireSession | null = null;
    try {
      const raw = globalThis.localStorage?.getItem(`${this.#key}:refreshed`);
      s = raw ? (JSON.parse(raw) as WireSession) : null;
    } catch {
      s = null;
    }
    if (s && s.id === this.id && this.#record && Date.parse(s.expireAt) > this.#record.expireAt.getTime()) {
      this.#set(s, this.#user, this.#ticket, "refresh");
      if (this.#storage) void this.#reloadTicket();
    }
  }

  async #reloadTicket(): Promise<void> {
    const saved = await this.#load();
    const sid = this.id;
    const t = sid ? saved.sessions[sid]?.ticket : undefined;
    if (t) this.#ticket = t;
  }

  async #gatewayTicket(check: boolean): Promise<string | null> {
    if (!this.#active()) throw new SessionGateError("no_session", "no live session for the gateway");
    if (check) {
      // The last attempt never opened: ask the gate whether the session lives.
      await this.#info();
      const st = this.status;
      if (st && st !== "active") throw new SessionGateError(`session_${st}`, `session ${st}`, 401);
      if (!st) throw new SessionGateError("no_session", "no live session for the gateway");
    }
    return (await this.#fresh()).ticket;
  }

  /** Takes a record as the current state; one `change` when anything a user sees moved. */
  #set(s: WireSession, user: WireUser | null, ticket: string | null, reason: ChangeReason): void {
    const wasActive = this.#active();
    const switched = wasActive && this.#record?.id !== s.id;
    this.#record = this.#resource(s, user ?? undefined);
    this.#user = user;
    this.#ticket = ticket;
    if (s.status !== "active") {
      this.#dead(s.status, reason);
      return;
    }
    this.#schedule(reason === "refresh");
    for (const gw of Object.values(this.gateway)) {
      // Sockets opened for another session must not outlive the switch: its
      // end (a 4401) would read as this one's.
      if (switched) gw.park();
      if (!wasActive || switched) gw.connect();
    }
    this.#changed(reason);
  }

  /** The session left `active` (here, in another tab, or on the gate). */
  #dead(status: Status, reason: ChangeReason): void {
    const rec = this.#record;
    if (!rec) return;
    if (this.#deadDone === `${rec.id}|${status}`) return;
    this.#deadDone = `${rec.id}|${status}`;
    if (rec.status !== status) this.#record = rec.withStatus(status, new Date(this.#now()));
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const ticket = this.#ticket;
    this.#ticket = null;
    this.#epoch++;
    for (const gw of Object.values(this.gateway)) gw.end(status);
    if (this.#storage && ticket) void this.#unsave(rec.id);
    this.#tab({ type: "ended", id: rec.id, status });
    this.#changed(reason);
  }

  /** Drops the current session without a status (it is gone or was never ours). */
  #forget(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#record = null;
    this.#user = null;
    this.#ticket = null;
    this.#epoch++;
    for (const gw of Object.values(this.gateway)) gw.park();
    this.#changed("logout");
  }

  #changed(reason: ChangeReason): void {
    const rec = this.#record;
    const sig = `${rec?.id}|${rec?.status}|${rec?.expireAt.getTime()}|${this.#user?.id}|${this.#user?.name}|${this.#user?.roles.join(",")}`;
    if (sig === this.#lastChange) return;
    this.#lastChange = sig;
    const ctx = this.#ctx();
    const ev: ChangeEvent = {
      ...ctx,
      status: rec?.status ?? null,
      userCtx: ctx,
      session: rec,
      user: this.#user,
      reason,
    };
    this.dispatch("change", ev);
  }

  #schedule(afterRefresh: boolean): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    const delay = this.#dueAt() - this.#now();
    // A refresh that left the ticket still due (refreshBefore >= ttl, or a
    // test clock) must not loop: calls still refresh lazily.
    if (delay <= 0 && afterRefresh) return;
    this.#timer = setTimeout(
      () => {
        this.#timer = null;
        void this.#timerRefresh();
      },
      Math.min(Math.max(0, delay), 2 ** 31 - 1),
    );
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /**
   * The timer's refresh. A transient failure (no network, a 5xx, a 429) is
   * tried again, waiting 1 s doubling to 30 s (or the gate's `Retry-After`),
   * while the session lasts: the old ticket may still be good until `exp`,
   * and a page that makes no calls would otherwise let it run out.
   */
  async #timerRefresh(): Promise<void> {
    if (!this.#active()) return;
    // Node's timers may fire a millisecond before the wall clock reaches the
    // moment they were set for: not due yet is not "nothing to do".
    if (this.#now() < this.#dueAt()) {
      this.#schedule(false);
      return;
    }
    try {
      await this.#refresh(false);
      this.#retryDelay = 0;
    } catch (err) {
      if (!transient(err)) return;
      const after = err instanceof SessionGateError && err.retryAfter ? err.retryAfter * 1000 : 0;
      this.#retryDelay = Math.min(this.#retryDelay ? this.#retryDelay * 2 : 1000, 30_000);
      if (this.#timer || !this.#active()) return;
      this.#timer = setTimeout(
        () => {
          this.#timer = null;
          void this.#timerRefresh();
        },
        Math.max(this.#retryDelay, after),
      );
      (this.#timer as { unref?: () => void }).unref?.();
    }
  }

  #tab(msg: TabMessage): void {
    try {
      this.#channel?.postMessage(msg);
    } catch {
      // a closed channel: nobody to tell
    }
  }

  #fromTab(msg: TabMessage): void {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "login" && msg.id !== this.id) {
      // The cookie now holds another session: follow it.
      void this.restore().catch(() => undefined);
      return;
    }
    if (msg.id !== this.id || !this.#record) return;
    if (msg.type === "refresh" && msg.session) {
      if (Date.parse(msg.session.expireAt) > this.#record.expireAt.getTime()) {
        this.#set(msg.session, this.#user, this.#ticket, "refresh");
        if (this.#storage) void this.#reloadTicket();
      }
    } else if (msg.type === "ended" && msg.status && this.#active()) {
      this.#dead(msg.status, "tab");
    }
  }

  // ---- bearer storage -----------------------------------------------------

  async #load(): Promise<Saved> {
    const empty: Saved = { current: null, sessions: {} };
    if (!this.#storage) return empty;
    const raw = await this.#storage.read(this.#key);
    if (!raw) return empty;
    try {
      const v = JSON.parse(raw) as Partial<Saved>;
      return { current: v.current ?? null, sessions: v.sessions ?? {} };
    } catch {
      return empty;
    }
  }

  async #save(sid: string, ticket: string | null): Promise<void> {
    if (!this.#storage || !ticket) return;
    const saved = await this.#load();
    saved.sessions[sid] = { ticket, username: this.#username };
    saved.current = sid;
    await this.#storage.write(this.#key, JSON.stringify(saved));
  }

  async #unsave(sid: string): Promise<void> {
    if (!this.#storage) return;
    const saved = await this.#load();
    if (!saved.sessions[sid]) return;
    delete saved.sessions[sid];
    if (saved.current === sid) saved.current = null;
    if (Object.keys(saved.sessions).length === 0) await this.#storage.remove(this.#key);
    else await this.#storage.write(this.#key, JSON.stringify(saved));
  }
}

/** Whether a failed call may work when tried again: no answer, a 5xx or a 429, not a refusal. */
function transient(err: unknown): boolean {
  if (!(err instanceof SessionGateError)) return true;
  if (err.sessionEnded) return false;
  return err.status === 0 || err.status === 429 || err.status >= 500;
}
