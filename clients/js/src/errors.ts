/** The one error class the SDK throws. */

/**
 * A refusal from the gate (`code` is SPEC section 8's error code, `status`
 * the HTTP status, `retryAfter` the seconds of `Retry-After` when sent) or a
 * failure on the client side, with `status` 0 and one of these codes:
 * `network_error` (the request never got an answer), `no_session` (the call
 * needs a live session), `no_websocket` (no WebSocket implementation),
 * `queue_full` (too many emits waiting for a reconnect), `closed` (the
 * gateway was closed for good), `bad_response` (an answer that is not what
 * the gate sends).
 */
export class SessionGateError extends Error {
  override readonly name = "SessionGateError";
  readonly code: string;
  readonly status: number;
  readonly retryAfter: number | undefined;
  /** The parsed error body, when there was one. */
  readonly body: unknown;

  constructor(code: string, message: string, status = 0, retryAfter?: number, body?: unknown) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
    this.body = body;
  }

  /** Whether the session behind the call is over (401 `session_*`). */
  get sessionEnded(): boolean {
    return this.status === 401 && this.code.startsWith("session_");
  }
}
