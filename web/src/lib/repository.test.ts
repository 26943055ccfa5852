import { describe, expect, it } from 'vitest';
import { usesSsh } from './repository';

describe('usesSsh', () => {
  it('knows the SSH forms', () => {
    expect(usesSsh('ssh://git@example.com/acme/app.git')).toBe(true);
    expect(usesSsh('git+ssh://git@example.com:2222/acme/app.git')).toBe(true);
    expect(usesSsh('git@github.com:acme/app.git')).toBe(true);
    expect(usesSsh('  git@github.com:acme/app.git ')).toBe(true);
  });
  it('leaves the others alone', () => {
    expect(usesSsh('https://github.com/acme/app')).toBe(false);
    expect(usesSsh('git://example.com/app.git')).toBe(false);
    expect(usesSsh('file:///srv/app')).toBe(false);
    expect(usesSsh('/srv/app')).toBe(false);
    expect(usesSsh('git@github.com:')).toBe(false);
    expect(usesSsh('a/b@c:d')).toBe(false);
  });
});
