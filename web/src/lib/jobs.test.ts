import { describe, expect, it } from 'vitest';
import { jobLabel, jobsByPeer } from './jobs';

const since = '2026-01-01T00:00:00Z';

describe('jobLabel', () => {
  it('names a build by its derivation and system', () => {
    expect(
      jobLabel({
        job_id: 'j',
        kind: 'build',
        subject: '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello-2.12.drv',
        system: 'x86_64-linux',
        since,
      }),
    ).toEqual({ text: 'build hello-2.12 (x86_64-linux)', href: null });
  });

  it('links an evaluation to its page', () => {
    const id = '6f1c2b9e-0000-4000-8000-000000000000';
    expect(jobLabel({ job_id: 'j', kind: 'evaluation', subject: id, system: 'evaluation', since })).toEqual({
      text: 'evaluation 6f1c2b9e',
      href: `/evals/${id}`,
    });
  });
});

describe('jobsByPeer', () => {
  it('keys each worker registration’s jobs by peer id', () => {
    const job = { job_id: 'j', kind: 'build', subject: '/nix/store/x.drv', system: 's', since };
    const m = jobsByPeer([
      { peer_id: 'a', jobs: [job] },
      { peer_id: 'b', jobs: [] },
    ]);
    expect(m.get('a')).toEqual([job]);
    expect(m.get('b')).toEqual([]);
    expect(m.get('c')).toBeUndefined();
  });
});
