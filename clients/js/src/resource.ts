/** One session record as an object: Clerk's attributes as `Date`s, Nakama's `isexpired(now)`. */

import type { Status, WireSession, WireUser } from "./types.js";

/** What a resource calls back into for `end()`, `remove()`, `touch()`. */
export interface SessionOwner {
  end(id?: string): Promise<SessionResource>;
  remove(id?: string): Promise<SessionResource>;
  touch(): Promise<SessionResource>;
  readonly id: string | null;
}

export class SessionResource {
  readonly id: string;
  readonly userId: string;
  readonly status: Status;
  /** Read-only: fixed at login (SPEC section 5). */
  readonly vars: Readonly<Record<string, string>>;
  readonly createdAt: Date;
  readonly lastActiveAt: Date;
  readonly expireAt: Date;
  readonly abandonAt: Date;
  readonly updatedAt: Date;
  /** The user, when the answer carried it (login, info). */
  readonly user: WireUser | undefined;
  #owner: SessionOwner | undefined;

  constructor(w: WireSession, owner?: SessionOwner, user?: WireUser) {
    this.id = w.id;
    this.userId = w.userId;
    this.status = w.status;
    this.vars = Object.freeze({ ...w.vars });
    this.createdAt = new Date(w.createdAt);
    this.lastActiveAt = new Date(w.lastActiveAt);
    this.expireAt = new Date(w.expireAt);
    this.abandonAt = new Date(w.abandonAt);
    this.updatedAt = new Date(w.updatedAt);
    this.user = user;
    this.#owner = owner;
  }

  /** Nakama's spelling of `userId`. */
  get user_id(): string {
    return this.userId;
  }

  /** Expiry in seconds since the epoch. */
  get expires_at(): number {
    return Math.floor(this.expireAt.getTime() / 1000);
  }

  /** Whether `expireAt` is past at `now`, in seconds since the epoch (as Nakama's). */
  isexpired(now: number = Date.now() / 1000): boolean {
    return this.expireAt.getTime() / 1000 - now < 0;
  }

  /** Marks it ended (Clerk's `session.end()`). */
  end(): Promise<SessionResource> {
    return this.#need().end(this.id);
  }

  /** Marks it removed; it leaves the list (Clerk's `session.remove()`). */
  remove(): Promise<SessionResource> {
    return this.#need().remove(this.id);
  }

  /** Records activity; only the client's current session can be touched. */
  touch(): Promise<SessionResource> {
    return this.#need().touch();
  }

  /** The same record with another status (what the gate did, without asking again). */
  withStatus(status: Status, at = new Date()): SessionResource {
    return new SessionResource({ ...this.toJSON(), status, updatedAt: at.toISOString() }, this.#owner, this.user);
  }

  toJSON(): WireSession {
    return {
      id: this.id,
      userId: this.userId,
      status: this.status,
      vars: { ...this.vars },
      createdAt: this.createdAt.toISOString(),
      lastActiveAt: this.lastActiveAt.toISOString(),
      expireAt: this.expireAt.toISOString(),
      abandonAt: this.abandonAt.toISOString(),
      updatedAt: this.updatedAt.toISOString(),
    };
  }

  #need(): SessionOwner {
    if (!this.#owner) throw new Error("this session record is not bound to a Session client");
    return this.#owner;
  }
}
