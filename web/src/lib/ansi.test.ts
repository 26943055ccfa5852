import { describe, expect, it } from 'vitest';
import { firstErrorLine, parseAnsi, parseLog, stripAnsi } from './ansi';

describe('ansi', () => {
  it('turns colour sequences into classes', () => {
    const { spans } = parseAnsi('ok \x1b[31;1mboom\x1b[0m done');
    expect(spans).toEqual([
      { text: 'ok ', classes: [] },
      { text: 'boom', classes: ['fg-1', 'bold'] },
      { text: ' done', classes: [] },
    ]);
  });
  it('knows the bright colours and skips 256-colour arguments', () => {
    expect(parseAnsi('\x1b[92mgreen').spans[0]?.classes).toEqual(['fg-10']);
    expect(parseAnsi('\x1b[38;5;196;4mx').spans[0]?.classes).toEqual(['underline']);
  });
  it('carries a colour across lines and keeps what a carriage return overwrote last', () => {
    const lines = parseLog('\x1b[33mwarn\nstill\x1b[0m\nprogress 10%\rprogress 100%\n');
    expect(lines).toHaveLength(3);
    expect(lines[1]?.[0]).toEqual({ text: 'still', classes: ['fg-3'] });
    expect(lines[2]?.[0]?.text).toBe('progress 100%');
  });
  it('drops cursor movement and hyperlinks', () => {
    expect(stripAnsi('\x1b[2Kline\x1b]8;;http://x\x07link\x1b]8;;\x07')).toBe('linelink');
  });
  it('finds the first error line, colours or not', () => {
    const log = ['building', 'checking for gcc... yes', 'src/main.c:3: \x1b[31merror:\x1b[0m expected ;', 'error: builder failed'];
    expect(firstErrorLine(log)).toBe(2);
    expect(firstErrorLine(['all good', 'terror is not a word here? no: errorless'])).toBe(-1);
    expect(firstErrorLine(['make: *** [Makefile:3: all] Error 1'])).toBe(0);
  });
});
