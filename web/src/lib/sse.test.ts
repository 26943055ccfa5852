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
