import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The folder holding hsmint's package.json, from source (tests) or from dist/ alike. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'hsm-profiles'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('hsmint package root not found');
    dir = parent;
  }
  return dir;
}
