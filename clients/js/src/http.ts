/** URLs derived from `host`, and the one fetch wrapper every HTTP call goes through. */

import { SessionGateError } from "./errors.js";

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface Bases {
  /** `http(s)://host[:port][/prefix]`, no trailing slash. */
  http: string;
  /** The same with `ws(s)://`. */
  ws: string;
}

/** `host` as `ws(s)://` or `http(s)://`; the other scheme is derived. Without one, the page's origin. */
export function bases(host?: string): Bases {
  let h = host;
  if (!h) {
    const loc = (globalThis as { location?: { origin?: string } }).location;
    if (!loc?.origin || loc.origin === "null") {
      throw new SessionGateError("bad_request", "host is required outside a browser page");
    }
    h = loc.origin;
  }
  const m = /^(wss?|https?):\/\/(.+)$/i.exec(h.trim());
  if (!m?.[1] || !m[2]) {
    throw new SessionGateError("bad_request", `host must be ws(s):// or http(s)://, not ${h}`);
  }
  const scheme = m[1].toLowerCase();
  const secure = scheme === "wss" || scheme === "https";
  const rest = m[2].replace(/\/+$/, "");
  return { http: `${secure ? "https" : "http"}://${rest}`, ws: `${secure ? "wss" : "ws"}://${rest}` };
}

/** Joins a base path and a caller's path with exactly one slash. */
export function join(base: string, path: string): string {
  if (!path) return base;
  if (path.startsWith("?")) return base + path;
  return `${base.replace(/\/+$/, "")}/${path.replace(/^\/+/, "")}`;
}

function retryAfter(h: Headers): number | undefined {
  const v = h.get("retry-after");
  if (v === null) return undefined;
  const n = Number(v);
  if (Number.isFinite(n)) return n;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export interface CallOptions {
  /** Bearer ticket; absent in cookie mode. */
  ticket?: string | null | undefined;
  /** Send the cookie (browsers' cookie mode). */
  cookie: boolean;
  body?: unknown;
  headers?: Record<string, string>;
}

export interface Answer {
  status: number;
  headers: Headers;
  /** Parsed JSON when the answer is JSON, the text otherwise, undefined when empty. */
  body: unknown;
}

/** One request; any status outside 2xx throws a `SessionGateError` with the gate's code. */
export async function call(fetchImpl: FetchLike, method: string, url: string, opts: CallOptions): Promise<Answer> {
  const headers: Record<string, string> = { accept: "application/json", ...opts.headers };
  if (opts.ticket) headers.authorization = `Bearer ${opts.ticket}`;
  const init: RequestInit = { method, headers, credentials: opts.cookie ? "include" : "omit" };
  if (opts.body !== undefined) {
    headers["content-type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetchImpl(url, init);
  } catch (err) {
    throw new SessionGateError(
      "network_error",
      `${method} ${url}: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
  const text = await res.text().catch(() => "");
  let body: unknown = text === "" ? undefined : text;
  const ok = res.status >= 200 && res.status < 300;
  if (text !== "" && (res.headers.get("content-type") ?? "").includes("json")) {
    try {
      body = JSON.parse(text);
    } catch {
      // A success that says JSON but is not: nothing the caller can use.
      if (ok)
        throw new SessionGateError("bad_response", `${method} ${url}: the JSON answer does not parse`, res.status);
      body = text;
    }
  }
  if (ok) return { status: res.status, headers: res.headers, body };
  const e = body as { error?: unknown; message?: unknown } | undefined;
  const code = typeof e?.error === "string" ? e.error : `http_${res.status}`;
  const message = typeof e?.message === "string" ? e.message : `${method} ${url}: ${res.status}`;
  throw new SessionGateError(code, message, res.status, retryAfter(res.headers), body);
}

/** The payload of a JWT, or null when it is not one. Never verified here: the gate does that. */
export function jwtClaims(ticket: string): { exp?: number; sid?: string; sub?: string } | null {
  const part = ticket.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}
