/**
 * A gateway connection: one WebSocket to `/gateway/<name>` that speaks
 * `{"event","data"}` text frames, reconnects with backoff, jitter and a
 * fresh ticket on any close but 4401, and stops for good on 4401.
 */

import { Emitter } from "./emitter.js";
import { SessionGateError } from "./errors.js";
import { STATUSES, type Status } from "./types.js";

/** The part of the WHATWG WebSocket the SDK uses (browsers, Node 22+, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType?: string;
  send(data: string | ArrayBufferLike | ArrayBufferView | Blob): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ReconnectOptions {
  /** First delay, ms (default 250). */
  minDelay?: number;
  /** Longest delay, ms (default 10000). */
  maxDelay?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
}

export type GatewayState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface GatewayOptions {
  /** `ws(s)://…/gateway/<name>` without a ticket. */
  url: string;
  /**
   * A fresh ticket for each connection attempt (null: rely on the cookie).
   * `check` is true after an attempt that never opened, so the owner can ask
   * the gate whether the session is still alive. A `SessionGateError` with a
   * `session_*` code ends the gateway for good; code `no_session` parks it.
   */
  ticket: (check: boolean) => Promise<string | null>;
  WebSocket?: WebSocketCtor | undefined;
  reconnect?: ReconnectOptions | undefined;
  /** Emits kept while not connected (default 100). */
  queueSize?: number | undefined;
  /** Told when the gate ended the session (Close 4401). */
  onEnded?: ((status: Status, reason: string) => void) | undefined;
}

/** The status in a 4401's reason (`session revoked`); `ended` when unreadable. */
export function statusFromReason(reason: string): Status {
  const word = reason.trim().split(/\s+/).pop() ?? "";
  return (STATUSES as readonly string[]).includes(word) && word !== "active" ? (word as Status) : "ended";
}

const OPEN = 1;

async function resolveWebSocket(given: WebSocketCtor | undefined): Promise<WebSocketCtor> {
  if (given) return given;
  const g = (globalThis as { WebSocket?: WebSocketCtor }).WebSocket;
  if (g) return g;
  try {
    // Node 20 has no global WebSocket: use the `ws` package when it is installed.
    const mod = "ws";
    const ws = (await import(/* @vite-ignore */ mod)) as { default?: WebSocketCtor; WebSocket?: WebSocketCtor };
    const ctor = ws.WebSocket ?? ws.default;
    if (ctor) return ctor;
  } catch {
    // fall through to the error below
  }
  throw new SessionGateError(
    "no_websocket",
    "no WebSocket implementation: pass the WebSocket option (e.g. the ws package) on Node 20",
  );
}

/**
 * Events: any name the server sends in `{"event": name}` frames; `message`
 * for any other frame; and the connection's own `open`, `close`
 * (`{code, reason}`), `reconnecting` (`{attempt, delay}`), `ended`
 * (the status of a 4401) and `error`.
 */
export class Gateway extends Emitter {
  readonly url: string;
  #opts: GatewayOptions;
  #ws: WebSocketLike | null = null;
  #state: GatewayState = "idle";
  #stopped = false;
  #attempt = 0;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #queue: string[] = [];
  #ended: Status | null = null;
  /** Bumped on every connect/close so a stale socket's events are ignored. */
  #generation = 0;

  constructor(opts: GatewayOptions) {
    super();
    this.url = opts.url;
    this.#opts = opts;
  }

  get state(): GatewayState {
    return this.#state;
  }

  /** The status the gate ended the session with (Close 4401), if it did. */
  get ended(): Status | null {
    return this.#ended;
  }

  /** Emits waiting for the connection. */
  get queued(): number {
    return this.#queue.length;
  }

  /** Opens (or reopens after `close` or a 4401) the connection. */
  connect(): void {
    if (this.#state === "open" || this.#state === "connecting") return;
    this.#stopped = false;
    this.#ended = null;
    this.#attempt = 0;
    void this.#open(false);
  }

  /** Sends `{"event", "data"}`; queued (bounded) while reconnecting. */
  emit(event: string, data?: unknown): this {
    return this.send(JSON.stringify({ event, data }));
  }

  /** Sends one raw frame; queued like `emit`. */
  send(frame: string): this {
    if (this.#ended || (this.#stopped && this.#state === "closed")) {
      throw new SessionGateError(
        this.#ended ? `session_${this.#ended}` : "closed",
        `gateway ${this.url} is closed`,
        this.#ended ? 401 : 0,
      );
    }
    const ws = this.#ws;
    if (ws && ws.readyState === OPEN && this.#state === "open") {
      ws.send(frame);
      return this;
    }
    const max = this.#opts.queueSize ?? 100;
    if (this.#queue.length >= max) {
      throw new SessionGateError("queue_full", `${max} emits are already waiting for ${this.url}`);
    }
    this.#queue.push(frame);
    return this;
  }

  /** Closes for good (no reconnect) and drops queued emits. */
  close(code = 1000, reason = ""): void {
    this.#stop();
    this.#state = "closed";
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    }
  }

  /** Ends it as the gate would have with a 4401 (the owner saw the session end). */
  end(status: Status, reason = `session ${status}`): void {
    if (this.#ended) return;
    this.close(1000, reason);
    this.#finish(status, reason);
  }

  /** Parks it without ending: no session right now (the owner reconnects later). */
  park(): void {
    this.close();
    this.#state = "idle";
    this.#stopped = false;
  }

  #stop(): void {
    this.#stopped = true;
    this.#generation++;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.#queue = [];
  }

  #finish(status: Status, reason: string): void {
    this.#ended = status;
    this.dispatch("ended", status, reason);
    this.#opts.onEnded?.(status, reason);
  }

  async #open(check: boolean): Promise<void> {
    const gen = ++this.#generation;
    this.#state = this.#attempt === 0 ? "connecting" : "reconnecting";
    let ticket: string | null;
    let Ctor: WebSocketCtor;
    try {
      Ctor = await resolveWebSocket(this.#opts.WebSocket);
      ticket = await this.#opts.ticket(check);
    } catch (err) {
      if (gen !== this.#generation) return;
      if (err instanceof SessionGateError && err.sessionEnded) {
        this.#stop();
        this.#state = "closed";
        this.#finish(err.code.slice("session_".length) as Status, err.message);
        return;
      }
      if (err instanceof SessionGateError && (err.code === "no_session" || err.code === "no_websocket")) {
        this.#state = "idle";
        this.dispatch("error", err);
        return;
      }
      this.dispatch("error", err);
      this.#retry(true);
      return;
    }
    if (gen !== this.#generation) return;
    const sep = this.url.includes("?") ? "&" : "?";
    const url = ticket ? `${this.url}${sep}ticket=${encodeURIComponent(ticket)}` : this.url;
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url);
    } catch (err) {
      this.dispatch("error", err);
      this.#retry(true);
      return;
    }
    try {
      ws.binaryType = "arraybuffer";
    } catch {
      // some implementations fix it
    }
    this.#ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (gen !== this.#generation) return;
      opened = true;
      this.#attempt = 0;
      this.#state = "open";
      const queued = this.#queue;
      this.#queue = [];
      for (const f of queued) ws.send(f);
      this.dispatch("open");
    };
    ws.onmessage = (ev) => {
      if (gen === this.#generation) this.#receive(ev.data);
    };
    ws.onerror = () => {
      // A close event always follows; reconnecting is decided there.
    };
    ws.onclose = (ev) => {
      if (gen !== this.#generation) return;
      this.#ws = null;
      const reason = typeof ev.reason === "string" ? ev.reason : String(ev.reason ?? "");
      this.dispatch("close", { code: ev.code, reason });
      if (ev.code === 4401) {
        this.#stop();
        this.#state = "closed";
        this.#finish(statusFromReason(reason), reason);
        return;
      }
      if (this.#stopped) {
        this.#state = "closed";
        return;
      }
      this.#retry(!opened);
    };
  }

  #receive(data: unknown): void {
    if (typeof data === "string") {
      let msg: unknown;
      try {
        msg = JSON.parse(data);
      } catch {
        msg = undefined;
      }
      if (msg && typeof msg === "object" && !Array.isArray(msg)) {
        const m = msg as { event?: unknown; data?: unknown };
        if (typeof m.event === "string") {
          this.dispatch(m.event, m.data);
          return;
        }
      }
    }
    this.dispatch("message", data);
  }

  #retry(check: boolean): void {
    if (this.#stopped) return;
    const r = this.#opts.reconnect ?? {};
    const min = r.minDelay ?? 250;
    const max = r.maxDelay ?? 10_000;
    const factor = r.factor ?? 2;
    this.#attempt++;
    const base = Math.min(max, min * factor ** (this.#attempt - 1));
    // Jitter over the upper half spreads many clients reconnecting at once.
    const delay = Math.round(base / 2 + (Math.random() * base) / 2);
    this.#state = "reconnecting";
    this.dispatch("reconnecting", { attempt: this.#attempt, delay });
    const gen = this.#generation;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (gen === this.#generation && !this.#stopped) void this.#open(check);
    }, delay);
    // In Node a pending reconnect alone does not keep the process alive.
    (this.#timer as { unref?: () => void }).unref?.();
  }
}
