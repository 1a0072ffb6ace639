import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../../core/audit/record.js';
import { HsmintError } from '../../../core/errors.js';
import { Authority, type AuditSink } from '../../../daemon/authority.js';
import { testCaller, testConfig } from '../../support/config.js';
import { MemoryKeyStore } from '../../support/memory-keystore.js';

/** An audit sink in memory, with a switch that makes it fail like a full disk. */
function memoryAudit() {
  const events: AuditEvent[] = [];
  let failing = false;
  let last: Date | undefined;
  const sink: AuditSink = {
    async append(event) {
      if (failing) throw new HsmintError('ERR_AUDIT_UNAVAILABLE', 'disk full');
      events.push(event);
      last = new Date();
      return { seq: events.length };
    },
    health: () => (failing ? { ok: false, reason: 'ENOSPC' } : { ok: true }),
    lastTimestamp: () => last,
  };
  return {
    sink,
    events,
    fail: (value: boolean) => (failing = value),
    setLast: (date: Date) => (last = date),
  };
}

async function authorityWith(audit: ReturnType<typeof memoryAudit>, now = () => new Date()) {
  return Authority.create({
    config: testConfig(),
    store: new MemoryKeyStore(),
    token: { label: 't', serial: '1' },
    logger: pino({ level: 'silent' }),
    audit: audit.sink,
    now,
  });
}

describe('the authority and its audit log', () => {
  it('records a mint with the caller before answering, and never the token', async () => {
    const audit = memoryAudit();
    const authority = await authorityWith(audit);
    const minted = await authority.mint({ aud: 'api' }, testCaller(), authority.settings);
    const record = audit.events.find((event) => event.event === 'mint');
    expect(record).toMatchObject({
      jti: minted.jti,
      kid: minted.kid,
      sub: minted.sub,
      uid: testCaller().uid,
      rule: 'svc',
    });
    expect(JSON.stringify(audit.events)).not.toContain(minted.token.split('.')[2]);
  });

  it('does not answer a mint whose record cannot be written', async () => {
    const audit = memoryAudit();
    const authority = await authorityWith(audit);
    audit.fail(true);
    await expect(
      authority.mint({ aud: 'api' }, testCaller(), authority.settings),
    ).rejects.toMatchObject({ code: 'ERR_AUDIT_UNAVAILABLE' });
    expect(authority.health()).toMatchObject({ status: 'degraded' });
    // Verification keeps working, and its failures are counted and recorded once the log is back.
    const result = await authority.verify({ token: 'a.b.c' });
    expect(result.valid).toBe(false);
    audit.fail(false);
    await authority.mint({ aud: 'api' }, testCaller(), authority.settings);
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(audit.events.some((event) => event.event === 'audit.unrecorded')).toBe(true);
    expect(authority.health().status).toBe('ok');
  });

  it('stops minting when the clock runs back behind the last record, and records it', async () => {
    const audit = memoryAudit();
    let now = new Date('2026-11-28T12:00:00Z');
    const authority = await authorityWith(audit, () => now);
    audit.setLast(new Date('2026-11-28T12:10:00Z'));
    await expect(
      authority.mint({ aud: 'api' }, testCaller(), authority.settings),
    ).rejects.toMatchObject({ code: 'ERR_CLOCK_ROLLBACK' });
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(audit.events.some((event) => event.event === 'clock.rollback')).toBe(true);
    now = new Date('2026-11-28T12:10:10Z'); // within the 30 s skew of the last record
    audit.setLast(new Date('2026-11-28T12:10:00Z'));
    await expect(
      authority.mint({ aud: 'api' }, testCaller(), authority.settings),
    ).resolves.toHaveProperty('jti');
  });

  it('records denials with their code', async () => {
    const audit = memoryAudit();
    const authority = await authorityWith(audit);
    await expect(
      authority.mint({ aud: 'elsewhere' }, testCaller(), authority.settings),
    ).rejects.toMatchObject({ code: 'ERR_AUDIENCE_NOT_ALLOWED' });
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(audit.events.find((event) => event.event === 'deny')).toMatchObject({
      code: 'ERR_AUDIENCE_NOT_ALLOWED',
      uid: testCaller().uid,
    });
  });
});
