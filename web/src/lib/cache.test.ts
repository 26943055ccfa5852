import { describe, expect, it } from 'vitest';
import { netrcLine, nixConf } from './cache';

describe('cache snippets', () => {
  it('names the cache URL and its key', () => {
    expect(nixConf('http://127.0.0.1:3000/', 'main', 'main:abc=', null)).toBe(
      'extra-substituters = http://127.0.0.1:3000/cache/main\nextra-trusted-public-keys = main:abc=\n',
    );
    expect(nixConf('https://ci.example', 'main', 'k', 30)).toContain('/cache/main?priority=30');
  });
  it('writes the netrc machine without the port', () => {
    expect(netrcLine('127.0.0.1:3000')).toBe('machine 127.0.0.1 login gradient password <your API key>');
  });
});
