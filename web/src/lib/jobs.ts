// A worker's current jobs as the organization page lists them (unit-tested).

export type RunningJob = { job_id: string; kind: string; subject: string; system: string; since: string };

/** What a job is about, in words, and where to look at it: a build's derivation name, an evaluation's page. */
export function jobLabel(job: RunningJob): { text: string; href: string | null } {
  if (job.kind === 'evaluation') return { text: `evaluation ${job.subject.slice(0, 8)}`, href: `/evals/${job.subject}` };
  // `/nix/store/<32 chars>-hello-2.12.drv` → `hello-2.12`
  const base = job.subject.split('/').pop() ?? job.subject;
  const name = base.replace(/^[0-9a-z]{32}-/, '').replace(/\.drv$/, '');
  return { text: `build ${name || base} (${job.system})`, href: null };
}

/** The jobs of each worker registration (by peer id) in an organization overview. */
export function jobsByPeer(workers: { peer_id: string; jobs: RunningJob[] }[]): Map<string, RunningJob[]> {
  return new Map(workers.map((w) => [w.peer_id, w.jobs]));
}
