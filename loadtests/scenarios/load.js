// Load: a constant arrival rate of single-text predictions (open model: k6 starts RATE iterations
// per second whether or not earlier ones finished, so queueing shows up as latency, not as a
// slower test). Thresholds are the SLOs of observability/runbooks.md#slos.
//   k6 run -e BASE_URL=... -e RATE=20 -e DURATION=1m loadtests/scenarios/load.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const RATE = Number(__ENV.RATE || 20);
const TEXTS = [
  'The battery lasts all day and the screen is gorgeous.',
  'Terrible support, I waited two weeks for a reply.',
  'It arrived on Tuesday.',
  'Not bad at all, though the manual is confusing.',
  'I would not buy this again, the hinge broke after a month.',
  'Exactly what the description promised.',
];

export const options = {
  scenarios: {
    load: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '1m',
      preAllocatedVUs: Number(__ENV.PRE_VUS || 16),
      maxVUs: Number(__ENV.MAX_VUS || 64),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.005'], // availability SLO: 99.5 %
    'http_req_duration{expected_response:true}': [
      `p(99)<${Number(__ENV.P99_MS || 500)}`, // latency SLO: 99 % within 0.5 s
      `p(95)<${Number(__ENV.P95_MS || 250)}`,
    ],
    checks: ['rate>0.995'],
    dropped_iterations: [`count<${Math.max(1, Math.floor(RATE))}`], // k6 itself kept up
  },
};

export default function () {
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: TEXTS[__ITER % TEXTS.length] }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
  });
  check(res, { 'predict 200': (r) => r.status === 200 });
}
