import pkcs11js from 'pkcs11js';

/**
 * pkcs11js writes a failure's message as the bare CKR name ("CKR_DEVICE_ERROR") and keeps the
 * number in `code`; sign-pool.ts sends it across threads as "CKR_NAME:code". Both are read.
 */
const CKR_MESSAGE = /^(CKR_[A-Z0-9_]+)(?::(\d+))?\b/;

/** The CKR code of a PKCS#11 failure, from a Pkcs11Error or from a message as above. */
export function ckrCode(error: unknown): number | undefined {
  if (error instanceof pkcs11js.Pkcs11Error) return error.code;
  const match = error instanceof Error ? CKR_MESSAGE.exec(error.message) : null;
  if (!match) return undefined;
  if (match[2] !== undefined) return Number(match[2]);
  const value = (pkcs11js as unknown as Record<string, unknown>)[match[1]!];
  return typeof value === 'number' ? value : undefined;
}

export function isCkr(error: unknown, code: number): boolean {
  return ckrCode(error) === code;
}

/** The CKR name of a PKCS#11 failure, for logs (never for clients). */
export function ckrName(error: unknown): string | undefined {
  const match = error instanceof Error ? CKR_MESSAGE.exec(error.message) : null;
  return match?.[1];
}
