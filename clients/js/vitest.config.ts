import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 20_000,
    hookTimeout: 60_000,
    // Each file starts its own redis-server and gate; two at a time fit 2 cores.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
