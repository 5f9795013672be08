// Soak: a moderate constant arrival rate for a long time (default 30 min; set DURATION) to find
// leaks and drift. The runner (python -m loadtests.run soak) prints the function's resident memory
// at the start and the end and its peak, read from /proc, next to k6's latency and error figures.
//   k6 run -e BASE_URL=... -e RATE=10 -e DURATION=30m loadtests/scenarios/soak.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const RATE = Number(__ENV.RATE || 10);
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
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{expected_response:true}': [`p(99)<${Number(__ENV.P99_MS || 500)}`],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: TEXTS[__ITER % TEXTS.length] }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
  });
  check(res, { 'predict 200': (r) => r.status === 200 });
}

