/** A controller connection: JSON over HTTP to `/controller/<name>`, under the session's ticket. */

import { SessionGateError } from "./errors.js";
import { call, type FetchLike, join } from "./http.js";

export interface RequestOptions {
  headers?: Record<string, string>;
}

export interface ControllerOptions {
  /** `http(s)://…/controller/<name>`. */
  url: string;
  fetch: FetchLike;
  /** The credentials for one request (fresh: refreshed first when due). */
  auth: () => Promise<{ ticket: string | null; cookie: boolean }>;
  /** Told of every refusal (the owner acts on 401 `session_*`). */
  onError?: ((err: SessionGateError) => void) | undefined;
}

export class Controller {
  readonly url: string;
  #opts: ControllerOptions;

  constructor(opts: ControllerOptions) {
    this.url = opts.url;
    this.#opts = opts;
  }

  /** One request; resolves with the parsed JSON (or text) body. */
  async request<T = unknown>(method: string, path = "", body?: unknown, opts?: RequestOptions): Promise<T> {
    const { ticket, cookie } = await this.#opts.auth();
    try {
      const answer = await call(this.#opts.fetch, method, join(this.url, path), {
        ticket,
        cookie,
        body,
        headers: opts?.headers ?? {},
      });
      return answer.body as T;
    } catch (err) {
      if (err instanceof SessionGateError) this.#opts.onError?.(err);
      throw err;
    }
  }

  get<T = unknown>(path = "", opts?: RequestOptions): Promise<T> {
    return this.request<T>("GET", path, undefined, opts);
  }
  post<T = unknown>(path = "", body?: unknown, opts?: RequestOptions): Promise<T> {
    return this.request<T>("POST", path, body, opts);
  }
  put<T = unknown>(path = "", body?: unknown, opts?: RequestOptions): Promise<T> {
    return this.request<T>("PUT", path, body, opts);
  }
  patch<T = unknown>(path = "", body?: unknown, opts?: RequestOptions): Promise<T> {
    return this.request<T>("PATCH", path, body, opts);
  }
  delete<T = unknown>(path = "", opts?: RequestOptions): Promise<T> {
    return this.request<T>("DELETE", path, undefined, opts);
  }
}
