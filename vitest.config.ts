import { defineConfig } from "vitest/config";

// Integration tests share one PostgreSQL server but each file gets its own database,
// so files may run in parallel; tests inside a file run in order.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Benchmark smoke runs and the Docker compose test are separate steps of test.sh.
    exclude: [
      ...(process.env.VITEST_BENCH_SMOKE === "1" ? [] : ["test/bench/**"]),
      ...(process.env.VITEST_DOCKER === "1" ? [] : ["test/docker/**"]),
    ],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    fileParallelism: true,
    maxWorkers: 2,
    globalSetup: ["test/support/global-setup.ts"],
  },
});
