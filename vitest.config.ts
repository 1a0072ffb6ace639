import { defineConfig } from 'vitest/config';

/**
 * Tests that time the daemon (answers within 100 ms, p99 under 50 ms) or load the whole
 * machine (the soak, kill -9 under load): they run after everything else, one file at a time,
 * so that they neither disturb the others nor are disturbed by them on 2-core CI machines.
 */
const ALONE = [
  'test/hostile/corpus.test.ts',
  'test/hostile/slow-clients.test.ts',
  'test/hostile/soak.test.ts',
  'test/hostile/crash.test.ts',
];

export default defineConfig({
  test: {
    reporters: ['default', './test/support/summary-reporter.ts'],
    // Integration tests run real daemons on real SoftHSM tokens: give them room, and keep
    // parallelism modest on 2-core CI machines.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: 'suite',
          include: ['test/**/*.test.ts'],
          exclude: ALONE,
          sequence: { groupOrder: 0 },
        },
      },
      {
        extends: true,
        test: {
          name: 'alone',
          include: ALONE,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
