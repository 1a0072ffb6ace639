import { describe, expect, it } from 'vitest';
import { nextFreeSlot, pivLayout, slotOfId } from '../../../../core/pkcs11/piv.js';
import { loadProfile } from '../../../../core/profiles.js';

describe('PIV slot layout', () => {
  const piv = loadProfile('softhsm-piv');

  it('gives signing keys the profile key slots, 9c first and asking for a login per signature', () => {
    const layout = pivLayout(piv, 'signing')!;
    expect(layout.slots.map((slot) => slot.slot).slice(0, 3)).toEqual(['9c', '82', '83']);
    expect(layout.slots[0]).toMatchObject({ ckaId: 0x02, setAlwaysAuthenticate: true });
    expect(layout.slots[1]).toMatchObject({ ckaId: 0x05, setAlwaysAuthenticate: false });
    expect(layout.labelsKept).toBe(true);
    expect(layout.algorithms).not.toContain('EdDSA');
  });

  it('puts the audit key in 9d and the CA key in 9a', () => {
    expect(pivLayout(piv, 'audit')!.slots.map((slot) => [slot.slot, slot.ckaId])).toEqual([
      ['9d', 0x03],
    ]);
    expect(pivLayout(piv, 'ca')!.slots.map((slot) => [slot.slot, slot.ckaId])).toEqual([
      ['9a', 0x01],
    ]);
  });

  it('lets a YubiKey keep its own labels and its own CKA_ALWAYS_AUTHENTICATE', () => {
    const layout = pivLayout(loadProfile('yubikey-piv'), 'signing')!;
    expect(layout.labelsKept).toBe(false);
    expect(layout.slots.some((slot) => slot.setAlwaysAuthenticate)).toBe(false);
  });

  it('leaves label-naming profiles alone', () => {
    expect(pivLayout(loadProfile('softhsm'), 'signing')).toBeUndefined();
  });

  it('takes the first slot with no key, or with a key hsmint gave up', () => {
    const layout = pivLayout(piv, 'signing')!;
    expect(nextFreeSlot(layout, new Set())?.slot).toBe('9c');
    expect(nextFreeSlot(layout, new Set([0x02]))?.slot).toBe('82');
    expect(nextFreeSlot(layout, new Set([0x02, 0x05, 0x07]))?.slot).toBe('83');
    // 9c holds a key destroyed in hsmint's eyes that the device kept: it is free again.
    expect(nextFreeSlot(layout, new Set([0x02, 0x05]), new Set([0x02]))?.slot).toBe('9c');
    // A key in a slot hsmint does not use (9a) takes nothing from the signing slots.
    expect(nextFreeSlot(layout, new Set([0x01]))?.slot).toBe('9c');
    const all = new Set(layout.slots.map((slot) => slot.ckaId));
    expect(nextFreeSlot(layout, all)).toBeUndefined();
  });

  it('knows a slot only by its one-byte CKA_ID', () => {
    const layout = pivLayout(piv, 'signing')!;
    expect(slotOfId(layout, Buffer.from([0x05]))?.slot).toBe('82');
    expect(slotOfId(layout, Buffer.from([0x03]))).toBeUndefined(); // 9d: the audit store's
    expect(slotOfId(layout, Buffer.from([0x00, 0x02]))).toBeUndefined(); // hsmint's random ids
  });
});
