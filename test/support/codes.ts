import { HsmintError } from '../../core/errors.js';

/** The code a call fails with, undefined when it succeeds: tests assert on codes, never on text. */
export function codeOf(run: () => unknown): string | undefined {
  try {
    run();
  } catch (error) {
    return error instanceof HsmintError ? error.code : `not an HsmintError: ${String(error)}`;
  }
  return undefined;
}

/** The error a promise rejects with (to check its code and details); fails when it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<HsmintError> {
  try {
    await promise;
  } catch (error) {
    return error as HsmintError;
  }
  throw new Error('expected a rejection');
}
