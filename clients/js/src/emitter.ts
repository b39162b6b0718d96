/** A minimal EventEmitter: `on`, `once`, `off`, and a protected `dispatch`. */

// biome-ignore lint/suspicious/noExplicitAny: listeners receive whatever the event carries.
export type Listener = (...args: any[]) => void;

export class Emitter {
  #listeners = new Map<string, Set<Listener>>();

  on(event: string, listener: Listener): this {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener);
    return this;
  }

  addListener(event: string, listener: Listener): this {
    return this.on(event, listener);
  }

  once(event: string, listener: Listener): this {
    const wrapper: Listener = (...args) => {
      this.off(event, wrapper);
      listener(...args);
    };
    return this.on(event, wrapper);
  }

  /** Removes one listener, or every listener of `event` when none is given. */
  off(event: string, listener?: Listener): this {
    if (listener) this.#listeners.get(event)?.delete(listener);
    else this.#listeners.delete(event);
    return this;
  }

  removeListener(event: string, listener: Listener): this {
    return this.off(event, listener);
  }

  listenerCount(event: string): number {
    return this.#listeners.get(event)?.size ?? 0;
  }

  /** Calls each listener; one that throws does not stop the others nor the caller. */
  protected dispatch(event: string, ...args: unknown[]): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        // Rethrown outside the SDK's own state changes, as an uncaught error.
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
