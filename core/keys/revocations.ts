import { HsmintError } from '../errors.js';
import type { DocumentStore } from './state.js';

export interface RevocationDocument {
  version: 1;
  /** jti -> the epoch second after which the token is dead anyway (its exp plus skew). */
  tokens: Record<string, number>;
}

/**
 * Revoked token ids, refused by verify until the token would have expired anyway. Written
 * to disk before a revocation is acknowledged, so it holds across restarts; bounded, and a
 * full list refuses new entries rather than forgetting old ones.
 */
export class RevocationList {
  private entries = new Map<string, number>();

  constructor(
    private readonly document: DocumentStore<RevocationDocument>,
    private readonly limit: () => number,
    private readonly now: () => number,
  ) {}

  async load(): Promise<void> {
    const stored = await this.document.read();
    this.entries = new Map(
      Object.entries(stored?.tokens ?? {}).filter(([, until]) => typeof until === 'number'),
    );
    this.prune();
  }

  isRevoked(jti: unknown): boolean {
    if (typeof jti !== 'string') return false;
    const until = this.entries.get(jti);
    return until !== undefined && until >= this.now();
  }

  get size(): number {
    return this.entries.size;
  }

  /** Revokes `jti` until `until`; returns false if it was already revoked. */
  async revoke(jti: string, until: number): Promise<boolean> {
    this.prune();
    const known = this.entries.get(jti);
    if (known !== undefined && known >= until) return false;
    if (known === undefined && this.entries.size >= this.limit()) {
      throw new HsmintError(
        'ERR_REVOCATION_LIST_FULL',
        `the revocation list holds ${this.entries.size} live entries`,
      );
    }
    const next = new Map(this.entries).set(jti, until);
    await this.document.write({ version: 1, tokens: Object.fromEntries(next) });
    this.entries = next;
    return true;
  }

  private prune(): void {
    const now = this.now();
    for (const [jti, until] of this.entries) if (until < now) this.entries.delete(jti);
  }
}
