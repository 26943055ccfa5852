import { describe, expect, it } from 'vitest';
import { parseLanding, rememberNext, takeNext } from './oidc';

describe('oidc landing', () => {
  it('reads the session token the callback hands over', () => {
    expect(parseLanding('#token=eyJ.a.b')).toEqual({ kind: 'token', token: 'eyJ.a.b' });
  });
  it('reads a link and an error with its sentence', () => {
    expect(parseLanding('#linked=1')).toEqual({ kind: 'linked' });
    expect(parseLanding('#error=oidc_account_exists&message=an+account+with+this+email+already+exists')).toEqual({
      kind: 'error',
      code: 'oidc_account_exists',
      message: 'an account with this email already exists',
    });
    expect(parseLanding('#error=oidc_state_invalid')).toMatchObject({ kind: 'error', code: 'oidc_state_invalid' });
  });
  it('says nothing happened without a fragment', () => {
    expect(parseLanding('')).toEqual({ kind: 'none' });
  });
  it('remembers where to come back to, once', () => {
    const map = new Map<string, string>();
    const storage = {
      getItem: (k: string) => map.get(k) ?? null,
      setItem: (k: string, v: string) => void map.set(k, v),
      removeItem: (k: string) => void map.delete(k),
    };
    rememberNext('/orgs/acme', storage);
    expect(takeNext(storage)).toBe('/orgs/acme');
    expect(takeNext(storage)).toBeNull();
  });
});
