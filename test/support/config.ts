import { parseConfig, type Config } from '../../core/config.js';

/** A valid config for tests that never touch a token: issuer urn:test, audiences api and other. */
export function testConfig(extra = ''): Config {
  return parseConfig(
    [
      'issuer: urn:test',
      'hsm:',
      '  token: t',
      '  pin_file: /etc/hsmint/pin',
      'tokens:',
      '  audiences: [api, other]',
      '  max_ttl: 1h',
      extra,
    ].join('\n'),
    '/etc/hsmint/hsmint.yaml',
  );
}
