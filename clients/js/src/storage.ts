/** Where bearer-mode tickets live: memory, `localStorage`, or your own store. */

/** Wharf SessionKit's storage shape; every method may return a promise. */
export interface TicketStorage {
  read(key: string): string | null | undefined | Promise<string | null | undefined>;
  write(key: string, value: string): void | Promise<void>;
  remove(key: string): void | Promise<void>;
}

/** Kept for the life of the object only. */
export class MemoryStorage implements TicketStorage {
  #items = new Map<string, string>();
  read(key: string): string | null {
    return this.#items.get(key) ?? null;
  }
  write(key: string, value: string): void {
    this.#items.set(key, value);
  }
  remove(key: string): void {
    this.#items.delete(key);
  }
}

/** The browser's `localStorage` (shared by the origin's tabs). */
export class LocalStorage implements TicketStorage {
  #store(): Storage {
    const ls = (globalThis as { localStorage?: Storage }).localStorage;
    if (!ls) throw new Error("localStorage is not available here");
    return ls;
  }
  read(key: string): string | null {
    return this.#store().getItem(key);
  }
  write(key: string, value: string): void {
    this.#store().setItem(key, value);
  }
  remove(key: string): void {
    this.#store().removeItem(key);
  }
}

/**
 * `"cookie"`: the browser holds the ticket in the gate's HttpOnly cookie,
 * never seen by script. `"memory"`, `"localStorage"` or an object: bearer
 * mode, the ticket kept there and sent as `Authorization: Bearer`.
 */
export type StorageOption = "cookie" | "memory" | "localStorage" | TicketStorage;

export function isBrowser(): boolean {
  return typeof (globalThis as { document?: unknown }).document !== "undefined";
}

export function resolveStorage(opt: StorageOption | undefined): TicketStorage | null {
  const o = opt ?? (isBrowser() ? "cookie" : "memory");
  if (o === "cookie") return null;
  if (o === "memory") return new MemoryStorage();
  if (o === "localStorage") return new LocalStorage();
  return o;
}
