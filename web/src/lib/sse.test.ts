import { describe, expect, it } from 'vitest';
import { SseParser, restoreChunk } from './sse';

describe('SseParser', () => {
  it('reads events split across chunks, with ids and types', () => {
    const p = new SseParser();
    expect(p.push('event: build\ndata: {"a"')).toEqual([]);
    expect(p.push(':1}\nid: 17/nix/store/x.drv\n\n: keep-alive\n\ndata: one\ndata: two\n\n')).toEqual([
      { event: 'build', data: '{"a":1}', id: '17/nix/store/x.drv' },
      { event: 'message', data: 'one\ntwo', id: '17/nix/store/x.drv' },
    ]);
  });
  it('accepts CRLF and an end event without data', () => {
    const p = new SseParser();
    expect(p.push('event: end\r\n\r\n')).toEqual([{ event: 'end', data: '', id: null }]);
  });
});

describe('restoreChunk', () => {
  it('puts back the line breaks the event encoding dropped at a chunk end', () => {
    expect(restoreChunk('one\ntwo', 0, 8)).toBe('one\ntwo\n');
    expect(restoreChunk('é', 8, 10)).toBe('é');
    expect(restoreChunk('x', 10, 13)).toBe('x\n\n');
    expect(restoreChunk('x', 0, null)).toBe('x');
  });
});

describe('follow', () => {
  it('reports a lost connection and resumes with Last-Event-ID, stopping at the end event', async () => {
    const { follow } = await import('./sse');
    const seen: string[] = [];
    const states: boolean[] = [];
    const calls: (string | null)[] = [];
    const stream = (text: string, thenFail: boolean) => {
        let sent = false;
        return new ReadableStream<Uint8Array>({
          pull(c) {
            if (!sent) {
              sent = true;
              c.enqueue(new TextEncoder().encode(text));
            } else if (thenFail) c.error(new Error('connection reset'));
            else c.close();
          },
        });
      };
    const realFetch = globalThis.fetch;
    globalThis.fetch = (async (_url: string, init: RequestInit) => {
      const headers = init.headers as Record<string, string>;
      calls.push(headers['Last-Event-ID'] ?? null);
      const body =
        calls.length === 1
          ? stream('id: 5\ndata: first\n\n', true)
          : stream('id: 9\ndata: second\n\nevent: end\ndata: Completed\n\n', false);
      return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
    }) as typeof fetch;
    try {
      await new Promise<void>((resolve) => {
        follow('/api/v1/evals/x/events', {
          token: 't',
          retryMs: 1,
          onConnection: (c) => states.push(c),
          onEvent: (e) => {
            seen.push(`${e.event}:${e.data}`);
            if (e.event === 'end') resolve();
          },
        });
      });
    } finally {
      globalThis.fetch = realFetch;
    }
    expect(calls).toEqual([null, '5']);
    expect(seen).toEqual(['message:first', 'message:second', 'end:Completed']);
    expect(states).toEqual([true, false, true]);
  });
});
