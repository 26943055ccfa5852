import { describe, expect, it } from 'vitest';
import { age, between, bytes, commitUrl, duration, statusRank, statusWords, storeName } from './format';

describe('format', () => {
  it('writes durations the way people read them', () => {
    expect(duration(4.4)).toBe('4s');
    expect(duration(184)).toBe('3m 4s');
    expect(duration(3720)).toBe('1h 2m');
    expect(duration(90000)).toBe('1d 1h');
  });
  it('measures a running thing up to now', () => {
    expect(between('2026-01-01T00:00:00Z', null, Date.parse('2026-01-01T00:01:05Z'))).toBe('1m 5s');
    expect(between(null, null)).toBe('');
  });
  it('says how long ago', () => {
    const now = Date.parse('2026-01-10T00:00:00Z');
    expect(age('2026-01-09T23:59:50Z', now)).toBe('just now');
    expect(age('2026-01-09T23:55:00Z', now)).toBe('5 minutes ago');
    expect(age('2026-01-09T00:00:00Z', now)).toBe('1 day ago');
  });
  it('puts failures before everything else', () => {
    const sorted = ['Completed', 'Queued', 'DependencyFailed', 'Failed', 'Building'].sort(
      (a, b) => statusRank(a) - statusRank(b),
    );
    expect(sorted).toEqual(['Failed', 'DependencyFailed', 'Building', 'Queued', 'Completed']);
  });
  it('names statuses and store paths in words', () => {
    expect(statusWords('DependencyFailed')).toBe('dependency failed');
    expect(storeName('/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-1.0.drv')).toBe('hello-1.0.drv');
  });
  it('writes sizes in binary units', () => {
    expect(bytes(0)).toBe('0 B');
    expect(bytes(1536)).toBe('1.5 KiB');
    expect(bytes(3 * 1024 ** 3)).toBe('3.0 GiB');
  });
  it('links commits of known forges only', () => {
    expect(commitUrl('https://github.com/a/b.git', 'abc')).toBe('https://github.com/a/b/commit/abc');
    expect(commitUrl('git@gitlab.com:a/b', 'abc')).toBe('https://gitlab.com/a/b/-/commit/abc');
    expect(commitUrl('file:///tmp/repo', 'abc')).toBeNull();
  });
});
