// Stress: ramp the arrival rate up in steps past what one pod can serve, then back down. 429 is the
// function's deliberate back-pressure (MAX_CONCURRENCY), so it counts as an expected answer here;
// anything else (5xx, timeouts) fails the run. `overloaded` reports how much was shed.
//   k6 run -e BASE_URL=... -e MAX_RATE=300 -e STEP=20s loadtests/scenarios/stress.js
import http from 'k6/http';
import { check } from 'k6';
import { Rate } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const MAX_RATE = Number(__ENV.MAX_RATE || 300);
const STEP = __ENV.STEP || '20s';
const overloaded = new Rate('overloaded');
const TEXTS = [
  'The battery lasts all day and the screen is gorgeous.',
  'Terrible support, I waited two weeks for a reply.',
  'It arrived on Tuesday.',
  'Not bad at all, though the manual is confusing.',
];

http.setResponseCallback(http.expectedStatuses(200, 429));

export const options = {
  scenarios: {
    stress: {
      executor: 'ramping-arrival-rate',
      startRate: Math.ceil(MAX_RATE / 10),
      timeUnit: '1s',
      preAllocatedVUs: Number(__ENV.PRE_VUS || 32),
      maxVUs: Number(__ENV.MAX_VUS || 200),
      stages: [
        { target: Math.ceil(MAX_RATE / 4), duration: STEP },
        { target: Math.ceil(MAX_RATE / 2), duration: STEP },
        { target: MAX_RATE, duration: STEP },
        { target: MAX_RATE, duration: STEP },
        { target: Math.ceil(MAX_RATE / 10), duration: STEP },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'], // 5xx and transport errors; 429 is expected
    checks: ['rate>0.99'],
    overloaded: [`rate<${Number(__ENV.MAX_SHED || 0.9)}`],
  },
};

export default function () {
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: TEXTS[__ITER % TEXTS.length] }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
    timeout: '10s',
  });
  overloaded.add(res.status === 429);
  check(res, {
    'answered 200 or 429': (r) => r.status === 200 || r.status === 429,
    '429 carries Retry-After': (r) => r.status !== 429 || r.headers['Retry-After'] !== undefined,
  });
}
