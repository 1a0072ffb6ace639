import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { HsmintError } from './errors.js';
import { isAlgorithm, type Algorithm } from './keys/algorithms.js';
import { packageRoot } from './package-root.js';

/** What hsmint knows about a family of tokens; see hsm-profiles/README.md. */
export interface HsmProfile {
  name: string;
  description: string;
  moduleCandidates: string[];
  algorithms: Algorithm[];
  sessions: number;
}

const NAME = /^[a-z0-9][a-z0-9-]{0,40}$/;

export function loadProfile(name: string): HsmProfile {
  if (!NAME.test(name))
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `hsm.profile: invalid profile name ${JSON.stringify(name)}`,
    );
  const path = join(packageRoot(), 'hsm-profiles', `${name}.yaml`);
  if (!existsSync(path))
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `hsm.profile: no profile named ${name} in hsm-profiles/`,
    );
  const raw = parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  const candidates = raw['module_candidates'];
  const algorithms = raw['algorithms'];
  if (
    raw['name'] !== name ||
    !Array.isArray(candidates) ||
    !candidates.every((c) => typeof c === 'string') ||
    !Array.isArray(algorithms) ||
    !algorithms.every(isAlgorithm) ||
    typeof raw['sessions'] !== 'number'
  ) {
    throw new HsmintError('ERR_CONFIG_INVALID', `hsm-profiles/${name}.yaml is malformed`);
  }
  return {
    name,
    description: String(raw['description'] ?? ''),
    moduleCandidates: candidates as string[],
    algorithms: algorithms as Algorithm[],
    sessions: raw['sessions'] as number,
  };
}

/** The first candidate module that exists on this machine. */
export function findModule(profile: HsmProfile): string {
  const found = profile.moduleCandidates.find((path) => existsSync(path));
  if (!found) {
    const tried = profile.moduleCandidates.join(', ') || 'none';
    const hint =
      profile.name === 'softhsm' ? ' Install it: apt-get install -y softhsm2.' : ' Set hsm.module.';
    throw new HsmintError(
      'ERR_MODULE_NOT_FOUND',
      `no ${profile.name} PKCS#11 module found (tried: ${tried}).${hint}`,
    );
  }
  return found;
}
