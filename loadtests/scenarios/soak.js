// Soak: a moderate constant arrival rate for a long time (default 30 min; set DURATION) to find
// leaks and drift. Besides latency and errors it samples the function's resident memory through
// /metrics (process_resident_memory_bytes, when the function exports process metrics) so growth
// shows in the summary.
//   k6 run -e BASE_URL=... -e RATE=10 -e DURATION=30m loadtests/scenarios/soak.js
import http from 'k6/http';
import { check } from 'k6';
import { Trend } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const RATE = Number(__ENV.RATE || 10);
const rss = new Trend('function_rss_mb');
const TEXTS = [
  'The battery lasts all day and the screen is gorgeous.',
  'Terrible support, I waited two weeks for a reply.',
  'It arrived on Tuesday.',
  'Not bad at all, though the manual is confusing.',
];

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: Number(__ENV.PRE_VUS || 8),
      maxVUs: Number(__ENV.MAX_VUS || 32),
      exec: 'predict',
    },
    memory: {
      executor: 'constant-arrival-rate',
      rate: 1,
      timeUnit: '10s',
      duration: __ENV.DURATION || '30m',
      preAllocatedVUs: 1,
      exec: 'sampleMemory',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{name:predict,expected_response:true}': [`p(99)<${Number(__ENV.P99_MS || 500)}`],
    checks: ['rate>0.999'],
    function_rss_mb: [`max<${Number(__ENV.MAX_RSS_MB || 2048)}`],
  },
};

export function predict() {
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: TEXTS[__ITER % TEXTS.length] }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
  });
  check(res, { 'predict 200': (r) => r.status === 200 });
}

export function sampleMemory() {
  const res = http.get(`${BASE_URL}/metrics`, { tags: { name: 'metrics' } });
  const match = /^process_resident_memory_bytes ([0-9.e+]+)$/m.exec(res.body || '');
  if (match) rss.add(Number(match[1]) / (1024 * 1024));
}
