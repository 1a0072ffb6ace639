/**
 * The slice of the Reflect metadata API (the `reflect-metadata` proposal) that tsyringe, and
 * so @peculiar/x509, checks for when it loads. @peculiar/x509 asks its users for a polyfill;
 * rather than a dependency for thirty lines, this defines the functions, and only those that
 * are missing, so a full polyfill loaded elsewhere keeps precedence. Import it before
 * @peculiar/x509 (core/ca/x509.ts does).
 */
type Key = unknown;
type Property = string | symbol | undefined;

const tables = new WeakMap<object, Map<Property, Map<Key, unknown>>>();

function table(target: object, property: Property, create: boolean): Map<Key, unknown> | undefined {
  let byProperty = tables.get(target);
  if (!byProperty) {
    if (!create) return undefined;
    byProperty = new Map();
    tables.set(target, byProperty);
  }
  let entries = byProperty.get(property);
  if (!entries && create) {
    entries = new Map();
    byProperty.set(property, entries);
  }
  return entries;
}

function getOwnMetadata(key: Key, target: object, property?: Property): unknown {
  return table(target, property, false)?.get(key);
}

function hasOwnMetadata(key: Key, target: object, property?: Property): boolean {
  return table(target, property, false)?.has(key) ?? false;
}

function getMetadata(key: Key, target: object, property?: Property): unknown {
  for (
    let at: object | null = target;
    at !== null;
    at = Object.getPrototypeOf(at) as object | null
  ) {
    if (hasOwnMetadata(key, at, property)) return getOwnMetadata(key, at, property);
  }
  return undefined;
}

function hasMetadata(key: Key, target: object, property?: Property): boolean {
  for (
    let at: object | null = target;
    at !== null;
    at = Object.getPrototypeOf(at) as object | null
  ) {
    if (hasOwnMetadata(key, at, property)) return true;
  }
  return false;
}

function defineMetadata(key: Key, value: unknown, target: object, property?: Property): void {
  table(target, property, true)!.set(key, value);
}

function metadata(key: Key, value: unknown) {
  return (target: object, property?: Property): void =>
    defineMetadata(key, value, target, property);
}

const api: Record<string, unknown> = {
  getOwnMetadata,
  hasOwnMetadata,
  getMetadata,
  hasMetadata,
  defineMetadata,
  metadata,
};
const reflect = Reflect as unknown as Record<string, unknown>;
for (const [name, fn] of Object.entries(api)) {
  if (typeof reflect[name] !== 'function') {
    Object.defineProperty(Reflect, name, {
      value: fn,
      writable: true,
      configurable: true,
      enumerable: false,
    });
  }
}
