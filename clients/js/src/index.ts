/**
 * `@sessiongate/client`: the browser and Node client of sessiongate.
 *
 * `Session` does every seed's job (enjine, kanso, Clerk, Wharf SessionKit,
 * Nakama); `Auth` and `Connection` are for those who hold the ticket themselves.
 */

export type { AuthOptions, ConnectionOptions, Paths } from "./connection.js";
export { Auth, Connection } from "./connection.js";
export type { RequestOptions } from "./controller.js";
export { Controller } from "./controller.js";
export type { Listener } from "./emitter.js";
export { Emitter } from "./emitter.js";
export { SessionGateError } from "./errors.js";
export type { GatewayState, ReconnectOptions, WebSocketCtor, WebSocketLike } from "./gateway.js";
export { Gateway, statusFromReason } from "./gateway.js";
export { SessionResource } from "./resource.js";
export type {
  AddArgs,
  ChangeEvent,
  ChangeReason,
  InfoResult,
  LoginArgs,
  LoginResult,
  SessionOptions,
  UserCtx,
} from "./session.js";
export { Session } from "./session.js";
export type { StorageOption, TicketStorage } from "./storage.js";
export { LocalStorage, MemoryStorage } from "./storage.js";
export type {
  ErrorBody,
  InfoResponse,
  LoginRequest,
  LoginResponse,
  RefreshResponse,
  SessionEvent,
  SessionListResponse,
  Status,
  WireSession,
  WireUser,
} from "./types.js";
export { STATUSES, WIRE_FIELDS } from "./types.js";

import { Session } from "./session.js";
/** Wharf's name: `new SessionKit({host, storage})` gives the same object. */
export const SessionKit = Session;
export type SessionKit = Session;
