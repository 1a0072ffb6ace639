/**
 * PIV slots as hsmint uses them on a token whose profile says `objects.naming: piv-slot`. A
 * PIV device has fixed key slots, each a one-byte CKA_ID, and labels the device chooses: keys
 * are found and made by slot, never by label.
 *
 * Which slots each of hsmint's stores takes:
 * - signing keys: the profile's `key_slots`, in order (9c, then the retired slots 82..95), so
 *   that a rotation always has a free slot for the next key;
 * - the audit key: 9d (Key Management, PIN policy once): one key, never touched by rotation;
 * - the internal CA's key: 9a (PIV Authentication). A CA key is better kept offline on
 *   another device; 9a is used only when the CA is configured on this one.
 */
import { HsmintError } from '../errors.js';
import type { Algorithm } from '../keys/algorithms.js';
import type { KeyPurpose } from '../keys/keystore.js';
import type { HsmProfile, PivSlot } from '../profiles.js';

/** The slots of the stores that are not the signing keys' (see the top). */
const PURPOSE_SLOTS: Record<Exclude<KeyPurpose, 'signing'>, PivSlot[]> = {
  audit: ['9d'],
  ca: ['9a'],
};

export interface PivSlotUse {
  slot: PivSlot;
  ckaId: number;
  /** The label the profile gives the slot's private key; written where the token keeps it. */
  label: string;
  /** hsmint sets CKA_ALWAYS_AUTHENTICATE on keys it makes here (the token then enforces it). */
  setAlwaysAuthenticate: boolean;
}

/** What one key store may do on a PIV token. */
export interface PivLayout {
  /** The store's slots, in the order it fills them. */
  slots: PivSlotUse[];
  /** The token keeps the labels hsmint writes (SoftHSM), or sets its own (a YubiKey). */
  labelsKept: boolean;
  /** The algorithms the profile says every device of the family supports. */
  algorithms: Algorithm[];
}

/** The PIV layout of `purpose`'s store under `profile`; undefined for label-naming profiles. */
export function pivLayout(profile: HsmProfile, purpose: KeyPurpose): PivLayout | undefined {
  const objects = profile.objects;
  if (objects.naming !== 'piv-slot') return undefined;
  const wanted = purpose === 'signing' ? objects.keySlots : PURPOSE_SLOTS[purpose];
  const context = profile.login.contextSpecific;
  const slots = wanted.map((slot): PivSlotUse => {
    const entry = objects.slots.find((candidate) => candidate.slot === slot);
    if (!entry)
      throw new HsmintError(
        'ERR_CONFIG_INVALID',
        `hsm-profiles/${profile.name}.yaml: objects.slots has no slot ${slot} for the ${purpose} key`,
      );
    return {
      slot,
      ckaId: entry.ckaId,
      label: entry.label,
      setAlwaysAuthenticate: context.setAlwaysAuthenticate && context.slots.includes(slot),
    };
  });
  return {
    slots,
    labelsKept: profile.keyTemplate.CKA_LABEL?.treatment !== 'fixed',
    algorithms: profile.algorithms,
  };
}

/**
 * The slot the next key goes to: the first of the store's slots whose CKA_ID holds no private
 * key, or holds one hsmint has given up (destroyed, where the device could not delete it and
 * the next generation overwrites it). Undefined when every slot holds a key in use.
 */
export function nextFreeSlot(
  layout: Pick<PivLayout, 'slots'>,
  occupied: ReadonlySet<number>,
  givenUp: ReadonlySet<number> = new Set(),
): PivSlotUse | undefined {
  return layout.slots.find((slot) => !occupied.has(slot.ckaId) || givenUp.has(slot.ckaId));
}

/** The slot whose CKA_ID is `id` (one byte), among the store's; undefined for any other object. */
export function slotOfId(layout: Pick<PivLayout, 'slots'>, id: Buffer): PivSlotUse | undefined {
  if (id.length !== 1) return undefined;
  return layout.slots.find((slot) => slot.ckaId === id[0]);
}
