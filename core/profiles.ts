import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { isMap, isScalar, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import { HsmintError } from './errors.js';
import { ALGORITHMS, type Algorithm, type RsaKeySize } from './keys/algorithms.js';
import { packageRoot } from './package-root.js';

export const DISTROS = ['debian', 'fedora', 'arch', 'source', 'macos'] as const;
export type Distro = (typeof DISTROS)[number];
export const CPU_ARCHES = ['x86_64', 'aarch64'] as const;
export type CpuArch = (typeof CPU_ARCHES)[number];

/** PIV key slots: the four named ones, then the twenty retired key management slots 82..95. */
export const PIV_KEY_SLOTS = [
  '9a',
  '9c',
  '9d',
  '9e',
  ...Array.from({ length: 20 }, (_, i) => (0x82 + i).toString(16)),
] as const;
export type PivSlot = string;

export const TOUCH_POLICIES = ['never', 'always', 'cached'] as const;
export type TouchPolicy = (typeof TOUCH_POLICIES)[number];
export const PIN_POLICIES = ['never', 'once', 'always'] as const;
export type PinPolicy = (typeof PIN_POLICIES)[number];

/** The attributes hsmint puts in its key templates, and what a token may do with each. */
export const TEMPLATE_ATTRIBUTES = [
  'CKA_TOKEN',
  'CKA_PRIVATE',
  'CKA_SENSITIVE',
  'CKA_EXTRACTABLE',
  'CKA_SIGN',
  'CKA_DECRYPT',
  'CKA_UNWRAP',
  'CKA_DERIVE',
  'CKA_LABEL',
  'CKA_ID',
  'CKA_ALWAYS_AUTHENTICATE',
] as const;
export type TemplateAttribute = (typeof TEMPLATE_ATTRIBUTES)[number];

export interface ModuleCandidate {
  path: string;
  distro: Distro;
  /** undefined: the same path on every CPU. */
  arch: CpuArch | undefined;
}

export interface TokenHints {
  /** CK_TOKEN_INFO.label as the module reports it, `{serial}` for the serial; undefined: chosen. */
  label: string | undefined;
  /** The device or module sets the label; an admin cannot choose it. */
  labelFixed: boolean;
  manufacturer: string | undefined;
  model: string | undefined;
  /** The PKCS#11 URI attributes that pick one device of the family, best first. */
  selectBy: Array<'token' | 'serial' | 'model' | 'manufacturer'>;
  note: string | undefined;
}

export interface AlgorithmSupport {
  /** Every device of the family, with the profile's module, generates and signs with it. */
  supported: boolean;
  /** RSA algorithms: the modulus sizes every such device takes; empty for the others. */
  rsaBits: RsaKeySize[];
  /** What devices with this firmware or newer add (EdDSA, larger RSA keys). */
  fromFirmware: { version: string; rsaBits: RsaKeySize[] } | undefined;
  note: string | undefined;
}

export interface KeyGeneration {
  onDevice: boolean;
  /** C_GenerateKeyPair works through the module; false: the admin uses the vendor's tool. */
  throughModule: boolean;
  /** Who must be logged in to generate; undefined when the module cannot. */
  login: 'user' | 'so' | undefined;
  note: string | undefined;
}

export interface PivSlotEntry {
  slot: PivSlot;
  /** The one-byte CKA_ID the module gives the slot's objects. */
  ckaId: number;
  /** The private key's CKA_LABEL as the module reports it. */
  label: string;
  pinPolicy: PinPolicy;
}

export type ObjectNaming =
  | {
      naming: 'label';
      /** Longest CKA_LABEL the token keeps; undefined when no limit is known. */
      labelMaxLength: number | undefined;
      idMaxBytes: number | undefined;
    }
  | {
      naming: 'piv-slot';
      /** PIV's Digital Signature slot (9c). */
      signingSlot: PivSlot;
      /** Where hsmint may put its keys, in the order it takes them. */
      keySlots: PivSlot[];
      slots: PivSlotEntry[];
    };

export interface AttributeTreatment {
  treatment: 'honored' | 'fixed' | 'limited' | 'selects-slot' | 'rejected';
  value: boolean | string | undefined;
  note: string | undefined;
}

export interface LoginRules {
  pin: {
    minLength: number | undefined;
    maxLength: number | undefined;
    /** Wrong PINs before the token locks it; undefined: no lock-out known. */
    retries: number | undefined;
    format: string | undefined;
    note: string | undefined;
  };
  /** Keys that want CKU_CONTEXT_SPECIFIC login after C_SignInit, before every signature. */
  contextSpecific: {
    slots: PivSlot[];
    /** hsmint sets CKA_ALWAYS_AUTHENTICATE itself (the token enforces it) for those slots. */
    setAlwaysAuthenticate: boolean;
    note: string | undefined;
  };
  touch: {
    policies: TouchPolicy[];
    /** What a touch time-out error tells the operator ("touch the key"); undefined: no touch. */
    hint: string | undefined;
    note: string | undefined;
  };
}

/** What hsmint knows about a family of tokens; see hsm-profiles/README.md. */
export interface HsmProfile {
  name: string;
  description: string;
  /** Module paths in the order findModule tries them. */
  moduleCandidates: string[];
  /** The same paths with the distribution and CPU each is for. */
  modules: ModuleCandidate[];
  token: TokenHints;
  /** The JWS algorithms every device of the family generates keys for and signs with. */
  algorithms: Algorithm[];
  algorithmSupport: Record<Algorithm, AlgorithmSupport>;
  keyGeneration: KeyGeneration;
  objects: ObjectNaming;
  /** Attributes the token does not simply keep as given; the others it does. */
  keyTemplate: Partial<Record<TemplateAttribute, AttributeTreatment>>;
  login: LoginRules;
  /** Signing sessions to open when hsm.sessions is not set. */
  sessions: number;
  /** Operations the device takes at once; the rest wait in a queue, they do not fail. */
  maxInFlight: number;
  /** How long one signature may take, a touch included. */
  signTimeoutMs: number;
}

const NAME = /^[a-z0-9][a-z0-9-]{0,40}$/;

function profilesDir(): string {
  return join(packageRoot(), 'hsm-profiles');
}

/** The names of the profiles shipped in hsm-profiles/, sorted. */
export function listProfiles(): string[] {
  return readdirSync(profilesDir())
    .filter((file) => file.endsWith('.yaml'))
    .map((file) => file.slice(0, -'.yaml'.length))
    .sort();
}

export function loadProfile(name: string): HsmProfile {
  if (!NAME.test(name))
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `hsm.profile: invalid profile name ${JSON.stringify(name)}`,
    );
  const path = join(profilesDir(), `${name}.yaml`);
  if (!existsSync(path))
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `hsm.profile: no profile named ${name} in hsm-profiles/ (there are: ${listProfiles().join(', ')})`,
    );
  const profile = parseProfile(readFileSync(path, 'utf8'), `hsm-profiles/${name}.yaml`);
  if (profile.name !== name)
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `name: ${JSON.stringify(profile.name)} is not the file's name (hsm-profiles/${name}.yaml)`,
    );
  return profile;
}

/**
 * Validates a profile against hsm-profiles/schema.json, then the rules a schema cannot say
 * (slot references, unique CKA_IDs), and returns it typed. Errors read like config errors:
 * `objects.slots[2].slot: ... (hsm-profiles/opensc.yaml:41)`.
 */
export function parseProfile(text: string, file: string): HsmProfile {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, uniqueKeys: true });
  const where = new Locator(doc, lines, file);
  if (doc.errors.length > 0) {
    const first = doc.errors[0]!;
    const line = first.linePos?.[0].line;
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `not valid YAML: ${first.message.split(/ at line |\n/)[0]} (${line === undefined ? file : `${file}:${line}`})`,
    );
  }
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 0 });
  } catch (cause) {
    throw new HsmintError('ERR_CONFIG_INVALID', `YAML aliases are not allowed (${file})`, {
      cause,
    });
  }
  const validate = validator();
  if (!validate(data)) where.fail(...describe(validate.errors ?? []));
  const raw = data as RawProfile;
  checkReferences(raw, where);
  return toProfile(raw);
}

/** Names the file, the key path and, where the YAML has it, the line. */
class Locator {
  constructor(
    private readonly doc: Document,
    private readonly lines: LineCounter,
    private readonly file: string,
  ) {}

  fail(path: Array<string | number>, message: string, keyOf?: string): never {
    const line = this.lineOf(path, keyOf);
    const at = line === undefined ? this.file : `${this.file}:${line}`;
    const shown = keyOf === undefined ? path : [...path, keyOf];
    throw new HsmintError(
      'ERR_CONFIG_INVALID',
      `${formatPath(shown) || '(top)'}: ${message} (${at})`,
    );
  }

  /**
   * The line of the key `keyOf` in the mapping at `path`; else of `path` itself (of its key when
   * it is a mapping's value, so that a nested block reads from its key's line); else of its
   * nearest parent.
   */
  private lineOf(path: Array<string | number>, keyOf?: string): number | undefined {
    if (keyOf !== undefined) {
      const line = this.keyLine(path, keyOf);
      if (line !== undefined) return line;
    }
    for (let depth = path.length; depth >= 0; depth--) {
      const step = path[depth - 1];
      if (typeof step === 'string') {
        const line = this.keyLine(path.slice(0, depth - 1), step);
        if (line !== undefined) return line;
      }
      const node = (
        depth === 0 ? this.doc.contents : this.doc.getIn(path.slice(0, depth), true)
      ) as Node | null;
      if (node?.range) return this.lines.linePos(node.range[0]).line;
    }
    return undefined;
  }

  private keyLine(path: Array<string | number>, key: string): number | undefined {
    const map = (path.length === 0 ? this.doc.contents : this.doc.getIn(path, true)) as Node;
    if (!isMap(map)) return undefined;
    const pair = map.items.find((item) => isScalar(item.key) && item.key.value === key);
    const range = (pair?.key as Node | undefined)?.range;
    return range ? this.lines.linePos(range[0]).line : undefined;
  }
}

function formatPath(path: Array<string | number>): string {
  return path
    .map((step, i) => (typeof step === 'number' ? `[${step}]` : i === 0 ? step : `.${step}`))
    .join('');
}

let compiled: ValidateFunction | undefined;

function validator(): ValidateFunction {
  if (compiled === undefined) {
    const schema = JSON.parse(readFileSync(join(profilesDir(), 'schema.json'), 'utf8')) as object;
    compiled = new Ajv2020({
      allErrors: false,
      strict: true,
      allowUnionTypes: true,
      verbose: true, // error.data and error.parentSchema, for the messages
    }).compile(schema);
  }
  return compiled;
}

/** Turns ajv's first error into a key path and a message an admin can act on. */
function describe(errors: ErrorObject[]): [Array<string | number>, string, string?] {
  // "must match then schema" only wraps the real error, which comes first.
  const error = errors.find((e) => e.keyword !== 'if') ?? errors[0];
  if (error === undefined) return [[], 'does not match hsm-profiles/schema.json'];
  const path = error.instancePath
    .split('/')
    .slice(1)
    .map((step) => step.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((step) => (/^\d+$/.test(step) ? Number(step) : step));
  const params = error.params as Record<string, unknown>;
  const allowed = (values: unknown[]) => values.map((value) => JSON.stringify(value)).join(', ');
  // An error inside propertyNames is about a key, not a value.
  if (error.propertyName !== undefined) {
    const names =
      error.keyword === 'enum'
        ? `; expected one of ${allowed(params['allowedValues'] as unknown[])}`
        : '';
    return [path, `unknown key${names}`, error.propertyName];
  }
  const known = () => {
    const properties = (error.parentSchema as { properties?: object } | undefined)?.properties;
    return properties === undefined
      ? ''
      : `; expected one of ${Object.keys(properties).join(', ')}`;
  };
  switch (error.keyword) {
    case 'required':
      return [path, 'is required', String(params['missingProperty'])];
    case 'additionalProperties':
      return [path, `unknown key${known()}`, String(params['additionalProperty'])];
    case 'unevaluatedProperties':
      return [path, 'unknown key', String(params['unevaluatedProperty'])];
    case 'enum':
      return [path, `expected one of ${allowed(params['allowedValues'] as unknown[])}`];
    case 'type': {
      const expected = `expected ${String(params['type']).replace(/,/g, ' or ')}`;
      // YAML reads 82 as a number: PIV slot ids and versions must be quoted.
      const quote = params['type'] === 'string' && typeof error.data === 'number';
      return [path, quote ? `${expected}; quote it: '${String(error.data)}'` : expected];
    }
    default:
      return [path, error.message ?? `fails ${error.keyword}`];
  }
}

/** Cross-references the schema cannot check. */
function checkReferences(raw: RawProfile, where: Locator): void {
  if (!ALGORITHMS.some((alg) => raw.algorithms[alg].supported))
    where.fail(['algorithms'], 'no algorithm is supported');
  if (raw.max_in_flight > raw.sessions)
    where.fail(
      ['max_in_flight'],
      `is more than sessions (${raw.sessions}); an operation needs a session`,
    );
  const touch = raw.login.touch;
  if (touch.policies.some((policy) => policy !== 'never') && touch.hint === null)
    where.fail(
      ['login', 'touch', 'hint'],
      'a key that waits for a touch needs the words that tell the operator to touch it',
    );
  const objects = raw.objects;
  const contextSlots = raw.login.context_specific.slots;
  if (objects.naming === 'label') {
    if (contextSlots.length > 0)
      where.fail(
        ['login', 'context_specific', 'slots'],
        'name PIV slots only with objects.naming piv-slot',
      );
    return;
  }
  const slots = new Set<string>();
  const ids = new Map<number, string>();
  objects.slots.forEach((entry, i) => {
    if (slots.has(entry.slot))
      where.fail(['objects', 'slots', i, 'slot'], `slot ${entry.slot} is listed twice`);
    slots.add(entry.slot);
    const other = ids.get(entry.cka_id);
    if (other !== undefined)
      where.fail(
        ['objects', 'slots', i, 'cka_id'],
        `CKA_ID ${hexByte(entry.cka_id)} is slot ${other}'s too`,
      );
    ids.set(entry.cka_id, entry.slot);
  });
  const known = (path: Array<string | number>, slot: string): void => {
    if (!slots.has(slot)) where.fail(path, `slot ${slot} is not in objects.slots`);
  };
  known(['objects', 'signing_slot'], objects.signing_slot);
  objects.key_slots.forEach((slot, i) => known(['objects', 'key_slots', i], slot));
  contextSlots.forEach((slot, i) => known(['login', 'context_specific', 'slots', i], slot));
}

function hexByte(value: number): string {
  return `0x${value.toString(16).padStart(2, '0')}`;
}

function toProfile(raw: RawProfile): HsmProfile {
  const algorithmSupport = Object.fromEntries(
    ALGORITHMS.map((alg) => {
      const entry = raw.algorithms[alg];
      const support: AlgorithmSupport = {
        supported: entry.supported,
        rsaBits: entry.rsa_bits ?? [],
        fromFirmware:
          entry.from_firmware === undefined
            ? undefined
            : { version: entry.from_firmware.version, rsaBits: entry.from_firmware.rsa_bits ?? [] },
        note: entry.note,
      };
      return [alg, support];
    }),
  ) as Record<Algorithm, AlgorithmSupport>;
  const objects: ObjectNaming =
    raw.objects.naming === 'label'
      ? {
          naming: 'label',
          labelMaxLength: raw.objects.label_max_length ?? undefined,
          idMaxBytes: raw.objects.id_max_bytes ?? undefined,
        }
      : {
          naming: 'piv-slot',
          signingSlot: raw.objects.signing_slot,
          keySlots: raw.objects.key_slots,
          slots: raw.objects.slots.map((entry) => ({
            slot: entry.slot,
            ckaId: entry.cka_id,
            label: entry.label,
            pinPolicy: entry.pin_policy,
          })),
        };
  const keyTemplate: Partial<Record<TemplateAttribute, AttributeTreatment>> = {};
  for (const [attribute, entry] of Object.entries(raw.key_template)) {
    keyTemplate[attribute as TemplateAttribute] = {
      treatment: entry.treatment,
      value: entry.value,
      note: entry.note,
    };
  }
  const { pin, context_specific: context, touch } = raw.login;
  return {
    name: raw.name,
    description: raw.description,
    moduleCandidates: raw.module_candidates.map((candidate) => candidate.path),
    modules: raw.module_candidates.map((candidate) => ({
      path: candidate.path,
      distro: candidate.distro,
      arch: candidate.arch,
    })),
    token: {
      label: raw.token.label ?? undefined,
      labelFixed: raw.token.label_fixed,
      manufacturer: raw.token.manufacturer ?? undefined,
      model: raw.token.model ?? undefined,
      selectBy: raw.token.select_by,
      note: raw.token.note,
    },
    algorithms: ALGORITHMS.filter((alg) => algorithmSupport[alg].supported),
    algorithmSupport,
    keyGeneration: {
      onDevice: raw.key_generation.on_device,
      throughModule: raw.key_generation.through_module,
      login: raw.key_generation.login ?? undefined,
      note: raw.key_generation.note,
    },
    objects,
    keyTemplate,
    login: {
      pin: {
        minLength: pin.min_length ?? undefined,
        maxLength: pin.max_length ?? undefined,
        retries: pin.retries ?? undefined,
        format: pin.format,
        note: pin.note,
      },
      contextSpecific: {
        slots: context.slots,
        setAlwaysAuthenticate: context.set_always_authenticate,
        note: context.note,
      },
      touch: { policies: touch.policies, hint: touch.hint ?? undefined, note: touch.note },
    },
    sessions: raw.sessions,
    maxInFlight: raw.max_in_flight,
    signTimeoutMs: raw.sign_timeout_ms,
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

/** A profile file as the schema admits it (snake_case, nulls for "unknown"). */
interface RawAlgorithm {
  supported: boolean;
  rsa_bits?: RsaKeySize[];
  from_firmware?: { version: string; rsa_bits?: RsaKeySize[] };
  note?: string;
}

interface RawProfile {
  name: string;
  description: string;
  module_candidates: Array<{ path: string; distro: Distro; arch?: CpuArch }>;
  token: {
    label: string | null;
    label_fixed: boolean;
    manufacturer: string | null;
    model: string | null;
    select_by: TokenHints['selectBy'];
    note?: string;
  };
  algorithms: Record<Algorithm, RawAlgorithm>;
  key_generation: {
    on_device: boolean;
    through_module: boolean;
    login: 'user' | 'so' | null;
    note?: string;
  };
  objects:
    | { naming: 'label'; label_max_length: number | null; id_max_bytes: number | null }
    | {
        naming: 'piv-slot';
        signing_slot: PivSlot;
        key_slots: PivSlot[];
        slots: Array<{ slot: PivSlot; cka_id: number; label: string; pin_policy: PinPolicy }>;
      };
  key_template: Record<
    string,
    { treatment: AttributeTreatment['treatment']; value?: boolean | string; note?: string }
  >;
  login: {
    pin: {
      min_length: number | null;
      max_length: number | null;
      retries: number | null;
      format?: string;
      note?: string;
    };
    context_specific: { slots: PivSlot[]; set_always_authenticate: boolean; note?: string };
    touch: { policies: TouchPolicy[]; hint: string | null; note?: string };
  };
  sessions: number;
  max_in_flight: number;
  sign_timeout_ms: number;
}
