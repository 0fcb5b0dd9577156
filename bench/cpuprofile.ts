// Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time aggregated by function (name + url + line) and by
// file. Usage: node --import tsx bench/cpuprofile.ts <file.cpuprofile> [top=30]
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTime {
  key: string;
  ms: number;
  share: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** Time outside (idle): the process waited for I/O. */
  idleMs: number;
  byFunction: SelfTime[];
  byFile: SelfTime[];
}

function shortUrl(url: string, repo: string): string {
  if (url === '') return '';
  let u = url.startsWith('file://') ? fileURLToPath(url) : url;
  if (u.startsWith(repo)) u = u.slice(repo.length + 1);
  return u.replace(/^node_modules\/\.pnpm\/[^/]+\/node_modules\//, 'node_modules/');
}

/** Self time per sample: sample i lasts until sample i+1 (the last one gets the mean interval). */
export function summarize(profile: CpuProfile, repo = process.cwd()): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  const n = profile.samples.length;
  const meanDelta = n > 1 ? (profile.endTime - profile.startTime) / n : 0;
  let total = 0;
  let idle = 0;
  for (let i = 0; i < n; i++) {
    const us = i + 1 < n ? profile.timeDeltas[i + 1]! : meanDelta;
    const node = byId.get(profile.samples[i]!);
    if (!node) continue;
    const cf = node.callFrame;
    const url = shortUrl(cf.url, repo);
    const name = cf.functionName || '(anonymous)';
    total += us;
    if (name === '(idle)') {
      idle += us;
      continue;
    }
    const fkey = url ? `${name}  ${url}:${cf.lineNumber + 1}` : name;
    fn.set(fkey, (fn.get(fkey) ?? 0) + us);
    const filekey = url || name;
    file.set(filekey, (file.get(filekey) ?? 0) + us);
  }
  const busy = total - idle;
  const list = (m: Map<string, number>) =>
    [...m.entries()]
      .map(([key, us]) => ({ key, ms: us / 1000, share: busy > 0 ? us / busy : 0 }))
      .sort((a, b) => b.ms - a.ms);
  return { totalMs: total / 1000, idleMs: idle / 1000, byFunction: list(fn), byFile: list(file) };
}

export function formatSummary(s: ProfileSummary, top = 30): string {
  const busy = s.totalMs - s.idleMs;
  const line = (t: SelfTime) =>
    `${t.ms.toFixed(0).padStart(8)} ms ${(t.share * 100).toFixed(1).padStart(5)}%  ${t.key}`;
  return [
    `profile: ${s.totalMs.toFixed(0)} ms sampled, ${busy.toFixed(0)} ms busy (${((busy / s.totalMs) * 100).toFixed(1)}%), ${s.idleMs.toFixed(0)} ms idle`,
    '',
    `top ${top} functions by self time (share of busy time):`,
    ...s.byFunction.slice(0, top).map(line),
    '',
    `top ${Math.min(top, 20)} files by self time:`,
    ...s.byFile.slice(0, Math.min(top, 20)).map(line),
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [path, topArg] = process.argv.slice(2);
  if (!path) {
    process.stderr.write('usage: node --import tsx bench/cpuprofile.ts <file.cpuprofile> [top]\n');
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  process.stdout.write(`${formatSummary(summarize(profile), Number(topArg ?? 30))}\n`);
}
