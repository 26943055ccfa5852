import { describe, expect, it } from 'vitest';
import { actionWords, actorWords, describeAgent } from './audit';

describe('describeAgent', () => {
  it('names browsers with their system', () => {
    expect(
      describeAgent('Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0'),
    ).toBe('Firefox on Linux');
    expect(
      describeAgent(
        'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15',
      ),
    ).toBe('Safari on macOS');
    expect(
      describeAgent(
        'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36 Edg/120.0',
      ),
    ).toBe('Edge on Windows');
    expect(
      describeAgent('Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36'),
    ).toBe('Chrome on Android');
  });

  it('names programs without their version', () => {
    expect(describeAgent('curl/8.5.0')).toBe('curl');
    expect(describeAgent('gradient-tui 0.1')).toBe('gradient-tui');
  });

  it('says so when nothing is known', () => {
    expect(describeAgent(null)).toBe('unknown client');
    expect(describeAgent('')).toBe('unknown client');
    expect(describeAgent('   ')).toBe('unknown client');
  });
});

describe('audit words', () => {
  it('puts the verb first', () => {
    expect(actionWords('project.created')).toBe('created project');
    expect(actionWords('push_cache.set')).toBe('set push cache');
    expect(actionWords('github_installation.unlinked')).toBe('unlinked github installation');
    expect(actionWords('odd')).toBe('odd');
  });

  it('names the actor and how they acted', () => {
    expect(actorWords({ actor: 'alice', via: 'session' })).toBe('alice');
    expect(actorWords({ actor: 'ci', via: 'api_key' })).toBe('ci (API key)');
    expect(actorWords({ actor: 'state', via: 'state' })).toBe('the state document');
  });
});
