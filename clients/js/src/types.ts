/** What the gate sends, as SPEC section 8 and `/_session/openapi.json` describe it. */

/** SPEC section 5's seven statuses. */
export type Status = "active" | "ended" | "removed" | "revoked" | "expired" | "abandoned" | "replaced";

export const STATUSES: readonly Status[] = [
  "active",
  "ended",
  "removed",
  "revoked",
  "expired",
  "abandoned",
  "replaced",
];

/** A session record on the wire (RFC 3339 strings). */
export interface WireSession {
  id: string;
  userId: string;
  status: Status;
  vars: Record<string, string>;
  createdAt: string;
  lastActiveAt: string;
  expireAt: string;
  abandonAt: string;
  updatedAt: string;
}

export interface WireUser {
  id: string;
  name: string;
  roles: string[];
}

export interface LoginResponse {
  ticket: string;
  session: WireSession;
  user: WireUser;
}

export interface InfoResponse {
  user: WireUser;
  session: WireSession;
}

export interface RefreshResponse {
  ticket: string;
  session: WireSession;
}

export interface SessionListResponse {
  sessions: WireSession[];
}

export interface SessionOnlyResponse {
  session: WireSession;
}

export interface ErrorBody {
  error: string;
  message: string;
}

/** A status change as the admin event stream (`GET /admin/events`) sends it. */
export interface SessionEvent {
  sid: string;
  userId: string;
  status: Status;
  at: string;
}

export interface LoginRequest {
  username: string;
  password: string;
  vars?: Record<string, string>;
}

/**
 * The field lists of the wire types, spelled so the compiler rejects a
 * missing or extra key; `test/openapi.test.ts` compares them with the
 * gate's OpenAPI document.
 */
type Keys<T> = { [K in keyof T]-?: true };
export const WIRE_FIELDS = {
  Session: {
    id: true,
    userId: true,
    status: true,
    vars: true,
    createdAt: true,
    lastActiveAt: true,
    expireAt: true,
    abandonAt: true,
    updatedAt: true,
  } satisfies Keys<WireSession>,
  User: { id: true, name: true, roles: true } satisfies Keys<WireUser>,
  LoginResponse: { ticket: true, session: true, user: true } satisfies Keys<LoginResponse>,
  InfoResponse: { user: true, session: true } satisfies Keys<InfoResponse>,
  RefreshResponse: { ticket: true, session: true } satisfies Keys<RefreshResponse>,
  SessionList: { sessions: true } satisfies Keys<SessionListResponse>,
  Error: { error: true, message: true } satisfies Keys<ErrorBody>,
  SessionEvent: { sid: true, userId: true, status: true, at: true } satisfies Keys<SessionEvent>,
  LoginRequest: { username: true, password: true, vars: true } satisfies Keys<LoginRequest>,
} as const;
