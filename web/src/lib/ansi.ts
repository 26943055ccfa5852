// A build log's ANSI colours (SGR sequences) turned into styled spans, and where its first error is.

export interface Span {
  text: string;
  /** CSS classes: `fg-<0..15>`, `bold`, `dim`, `italic`, `underline`. */
  classes: string[];
}

interface Style {
  fg: number | null;
  bold: boolean;
  dim: boolean;
  italic: boolean;
  underline: boolean;
}

const plain = (): Style => ({ fg: null, bold: false, dim: false, italic: false, underline: false });

function classesOf(s: Style): string[] {
  const c: string[] = [];
  if (s.fg !== null) c.push(`fg-${s.fg}`);
  if (s.bold) c.push('bold');
  if (s.dim) c.push('dim');
  if (s.italic) c.push('italic');
  if (s.underline) c.push('underline');
  return c;
}

function apply(style: Style, params: number[]): Style {
  const s = { ...style };
  for (let i = 0; i < params.length; i++) {
    const p = params[i] ?? 0;
    if (p === 0) Object.assign(s, plain());
    else if (p === 1) s.bold = true;
    else if (p === 2) s.dim = true;
    else if (p === 3) s.italic = true;
    else if (p === 4) s.underline = true;
    else if (p === 22) s.bold = s.dim = false;
    else if (p === 23) s.italic = false;
    else if (p === 24) s.underline = false;
    else if (p >= 30 && p <= 37) s.fg = p - 30;
    else if (p >= 90 && p <= 97) s.fg = p - 90 + 8;
    else if (p === 39) s.fg = null;
    else if (p === 38 || p === 48) {
      // 256-colour or true-colour: skip its arguments; the basic 16 are what builders use.
      i += params[i + 1] === 5 ? 2 : 4;
    }
  }
  return s;
}

// CSI sequences (colours and the cursor movements some tools print), and OSC sequences (hyperlinks, titles).
// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)/g;

/** One log line as spans; escape sequences other than colours are dropped. */
export function parseAnsi(line: string, start: Style = plain()): { spans: Span[]; end: Style } {
  const spans: Span[] = [];
  let style = start;
  let last = 0;
  for (const m of line.matchAll(ESCAPE)) {
    if (m.index > last) spans.push({ text: line.slice(last, m.index), classes: classesOf(style) });
    if (m[2] === 'm') {
      const params = (m[1] ?? '').split(';').map((p) => (p === '' ? 0 : Number(p)));
      style = apply(style, params);
    }
    last = m.index + m[0].length;
  }
  if (last < line.length) spans.push({ text: line.slice(last), classes: classesOf(style) });
  return { spans, end: style };
}

/** The whole log as lines of spans; a colour left on at a line's end carries to the next. */
export function parseLog(text: string): Span[][] {
  const lines = text.split('\n');
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  let style = plain();
  return lines.map((line) => {
    const { spans, end } = parseAnsi(line.replace(/\r$/, '').replace(/^.*\r/, ''), style);
    style = end;
    return spans;
  });
}

/** Text without escape sequences. */
export function stripAnsi(text: string): string {
  return text.replace(ESCAPE, '');
}

const ERROR_LINE =
  /(^|\s)(error|fatal)(\b|:)|^\s*error:|\bFAILED\b|\bfailed with exit code\b|\bbuilder for .* failed\b|Traceback \(most recent call last\)|^\s*(make|ninja): \*\*\*|\bpanicked at\b|\bundefined reference\b|\bcommand not found\b/i;

/** The index of the first line that looks like an error, or -1. */
export function firstErrorLine(lines: string[]): number {
  return lines.findIndex((l) => ERROR_LINE.test(stripAnsi(l)));
}
