import { randomBytes, randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as graphene from 'graphene-pk11';
import pkcs11js from 'pkcs11js';
import { HsmintError } from '../errors.js';
import { loadModule, tokenInfoOf } from './token.js';

export interface SoftHsmToken {
  dir: string;
  confPath: string;
  label: string;
  serial: string;
  pinFile: string;
  soPinFile: string;
}

/** Digits only: every PIN pad and every token's PIN policy takes them. */
function randomPin(length: number): string {
  let pin = '';
  for (let i = 0; i < length; i++) pin += String(randomInt(10));
  return pin;
}

/**
 * Makes a SoftHSM token in DIR with its own softhsm2.conf and token store, a random SO PIN
 * and user PIN in 0600 files. No softhsm2-util needed: the token is initialised through
 * PKCS#11 itself, so this works wherever the module is installed.
 */
export async function initSoftHsmToken(options: {
  dir: string;
  modulePath: string;
  label: string;
}): Promise<SoftHsmToken> {
  const dir = resolve(options.dir);
  const confPath = join(dir, 'softhsm2.conf');
  const tokenDir = join(dir, 'tokens');
  if (existsSync(confPath) || existsSync(tokenDir)) {
    throw new HsmintError(
      'ERR_ALREADY_INITIALIZED',
      `${dir} already holds a SoftHSM token; use another --dir or remove it`,
    );
  }
  await mkdir(tokenDir, { recursive: true, mode: 0o700 });
  await writeFile(
    confPath,
    [
      '# Written by `hsmint softhsm init`: a SoftHSM token store private to this directory.',
      `directories.tokendir = ${tokenDir}`,
      'objectstore.backend = file',
      'log.level = ERROR',
      'slots.removable = false',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const soPin = randomPin(16);
  const userPin = randomPin(12);
  const pinFile = join(dir, 'pin');
  const soPinFile = join(dir, 'so-pin');
  await writeFile(soPinFile, `${soPin}\n`, { mode: 0o600, flag: 'wx' });
  await writeFile(pinFile, `${userPin}\n`, { mode: 0o600, flag: 'wx' });

  const module = loadModule(options.modulePath, { SOFTHSM2_CONF: confPath });
  try {
    const slots = module.getSlots(true);
    let free: graphene.Slot | undefined;
    for (let i = 0; i < slots.length && !free; i++) {
      const slot = slots.items(i);
      if ((slot.getToken().flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) free = slot;
    }
    if (!free) throw new HsmintError('ERR_HSM_TOKEN_NOT_FOUND', 'SoftHSM offers no free slot');
    // The label field is 32 bytes padded with spaces; pkcs11js would pad with NULs.
    module.lib.C_InitToken(free.handle, soPin, options.label.padEnd(32, ' '));
    const serial = findSerial(module, options.label);
    const slot = findByLabel(module, options.label);
    const session = slot.open(
      graphene.SessionFlag.SERIAL_SESSION | graphene.SessionFlag.RW_SESSION,
    );
    try {
      session.login(soPin, graphene.UserType.SO);
      session.initPin(userPin);
      session.logout();
    } finally {
      session.close();
    }
    return { dir, confPath, label: options.label, serial, pinFile, soPinFile };
  } finally {
    module.finalize();
  }
}

function findByLabel(module: graphene.Module, label: string): graphene.Slot {
  const slots = module.getSlots(true);
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i);
    if (tokenInfoOf(slot).label === label) return slot;
  }
  throw new HsmintError('ERR_HSM_TOKEN_NOT_FOUND', `the new token ${label} did not appear`);
}

function findSerial(module: graphene.Module, label: string): string {
  return tokenInfoOf(findByLabel(module, label)).serial;
}

/** A label that will not collide with another hsmint token on the same module. */
export function defaultTokenLabel(): string {
  return `hsmint-${randomBytes(3).toString('hex')}`;
}
