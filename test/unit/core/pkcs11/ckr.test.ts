import pkcs11js from 'pkcs11js';
import { describe, expect, it } from 'vitest';
import { ckrCode, ckrName } from '../../../../core/pkcs11/ckr.js';

describe('CKR codes of PKCS#11 failures', () => {
  it('reads a bare CKR name, as pkcs11js writes its messages', () => {
    const error = new Error('CKR_DEVICE_ERROR');
    expect(ckrCode(error)).toBe(pkcs11js.CKR_DEVICE_ERROR);
    expect(ckrName(error)).toBe('CKR_DEVICE_ERROR');
  });

  it('reads "CKR_NAME:code", as a signing thread sends it', () => {
    const error = new Error(`CKR_KEY_HANDLE_INVALID:${pkcs11js.CKR_KEY_HANDLE_INVALID}`);
    expect(ckrCode(error)).toBe(pkcs11js.CKR_KEY_HANDLE_INVALID);
    expect(ckrName(error)).toBe('CKR_KEY_HANDLE_INVALID');
  });

  it('finds nothing in other errors', () => {
    expect(ckrCode(new Error('ENOENT: no such file'))).toBeUndefined();
    expect(ckrCode(new Error('CKR_NOT_A_REAL_CODE'))).toBeUndefined();
    expect(ckrName('CKR_DEVICE_ERROR')).toBeUndefined();
  });
});
