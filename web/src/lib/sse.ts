// Server-Sent Events read with fetch (EventSource cannot send the Authorization header): each event is
// handed over as it arrives; a lost connection is retried with `Last-Event-ID` so nothing is seen twice.

export interface SseEvent {
  event: string;
  data: string;
  id: string | null;
}

/** Splits an SSE byte stream (as text) into events; keeps the unfinished tail for the next chunk. */
export class SseParser {
  private buffer = '';
  private data: string[] = [];
  private event = '';
  private id: string | null = null;

  push(chunk: string): SseEvent[] {
    this.buffer += chunk;
    const out: SseEvent[] = [];
    let nl: number;
    while ((nl = this.buffer.search(/\r\n|\n|\r/)) !== -1) {
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + (this.buffer.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (this.data.length > 0 || this.event) {
          out.push({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
        }
        this.data = [];
        this.event = '';
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id') this.id = value;
    }
    return out;
  }
}

export interface Follow {
  close(): void;
}

export interface FollowOptions {
  token: string | null;
  onEvent(e: SseEvent): void;
  /** `true` while connected, `false` while the connection is lost and being retried. */
  onConnection?(connected: boolean): void;
  /** An answer that is not a stream (an API error): the stream is not retried. */
  onRefused?(status: number, body: string): void;
  retryMs?: number;
}

/** Follows `url` until an `end` event, `close()` or a refusal. */
export function follow(url: string, opts: FollowOptions): Follow {
  const controller = new AbortController();
  let lastId: string | null = null;
  let done = false;
  const retry = opts.retryMs ?? 1000;

  async function once(): Promise<void> {
    const headers: Record<string, string> = { Accept: 'text/event-stream' };
    if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    const r = await fetch(url, { headers, signal: controller.signal });
    if (!r.ok || !r.body || !(r.headers.get('content-type') ?? '').includes('text/event-stream')) {
      done = true;
      opts.onRefused?.(r.status, await r.text().catch(() => ''));
      return;
    }
    opts.onConnection?.(true);
    const parser = new SseParser();
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done: eof } = await reader.read();
      if (eof) return;
      for (const e of parser.push(value)) {
        if (e.id !== null) lastId = e.id;
        opts.onEvent(e);
        if (e.event === 'end') {
          done = true;
          controller.abort();
          return;
        }
      }
    }
  }

  void (async () => {
    while (!done && !controller.signal.aborted) {
      try {
        await once();
      } catch {
        // a dropped connection: retried below
      }
      if (done || controller.signal.aborted) break;
      opts.onConnection?.(false);
      await new Promise((r) => setTimeout(r, retry));
    }
  })();

  return {
    close() {
      done = true;
      controller.abort();
    },
  };
}

/**
 * A log chunk as it was written. The server's SSE encoder splits data into lines and drops a trailing line
 * break, so a chunk ending in `\n` arrives without it; the event id is the byte offset after the chunk, so
 * the bytes missing between the previous offset and this one are the dropped line breaks.
 */
export function restoreChunk(data: string, previousOffset: number, offset: number | null): string {
  if (offset === null || !Number.isFinite(offset)) return data;
  const missing = offset - previousOffset - new TextEncoder().encode(data).length;
  return missing > 0 ? data + '\n'.repeat(missing) : data;
}
