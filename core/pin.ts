import { open } from 'node:fs/promises';
import { constants } from 'node:fs';
import { HsmintError } from './errors.js';

const MAX_PIN_FILE_BYTES = 256;

/**
 * Reads a PIN from a file (or a systemd credential, which is a file too). The PIN never comes
 * from argv or the environment. The file must be a regular file that only its owner can read:
 * a group-readable PIN is a PIN that someone else already has.
 */
export async function readPinFile(path: string): Promise<string> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NOCTTY);
  } catch (cause) {
    throw new HsmintError('ERR_PIN_UNAVAILABLE', `cannot open PIN file ${path}`, { cause });
  }
  try {
    const info = await handle.stat();
    if (!info.isFile())
      throw new HsmintError('ERR_PIN_UNAVAILABLE', `PIN file ${path} is not a regular file`);
    if ((info.mode & 0o077) !== 0) {
      throw new HsmintError(
        'ERR_PIN_FILE_INSECURE',
        `PIN file ${path} has mode ${(info.mode & 0o777).toString(8)}; run: chmod 600 ${path}`,
      );
    }
    if (info.size > MAX_PIN_FILE_BYTES) {
      throw new HsmintError(
        'ERR_PIN_UNAVAILABLE',
        `PIN file ${path} is over ${MAX_PIN_FILE_BYTES} bytes`,
      );
    }
    const pin = (await handle.readFile('utf8')).replace(/\r?\n$/, '');
    if (pin === '' || /[\r\n\0]/.test(pin)) {
      throw new HsmintError(
        'ERR_PIN_UNAVAILABLE',
        `PIN file ${path} is empty or holds more than one line`,
      );
    }
    return pin;
  } finally {
    await handle.close();
  }
}
