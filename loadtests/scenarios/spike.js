// Spike: a quiet baseline, a sudden jump to SPIKE_RATE, then quiet again. The function must shed
// with 429 rather than fail, and recover: latency after the spike is checked on its own tag.
//   k6 run -e BASE_URL=... -e BASE_RATE=5 -e SPIKE_RATE=200 loadtests/scenarios/spike.js
import http from 'k6/http';
import { check } from 'k6';
import exec from 'k6/execution';
import { Rate } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const BASE_RATE = Number(__ENV.BASE_RATE || 5);
const SPIKE_RATE = Number(__ENV.SPIKE_RATE || 200);
const HOLD = __ENV.HOLD || '15s';
const overloaded = new Rate('overloaded');
const TEXTS = [
  'The battery lasts all day and the screen is gorgeous.',
  'Terrible support, I waited two weeks for a reply.',
  'It arrived on Tuesday.',
];

http.setResponseCallback(http.expectedStatuses(200, 429));

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: BASE_RATE,
      timeUnit: '1s',
      preAllocatedVUs: Number(__ENV.PRE_VUS || 32),
      maxVUs: Number(__ENV.MAX_VUS || 200),
      stages: [
        { target: BASE_RATE, duration: '10s' }, // baseline
        { target: SPIKE_RATE, duration: '2s' }, // the spike
        { target: SPIKE_RATE, duration: HOLD },
        { target: BASE_RATE, duration: '2s' },
        { target: BASE_RATE, duration: '15s' }, // recovery
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    // After the spike the function must be back to normal latency.
    'http_req_duration{phase:recovery,expected_response:true}': [`p(95)<${Number(__ENV.RECOVERY_P95_MS || 300)}`],
    overloaded: [`rate<${Number(__ENV.MAX_SHED || 0.9)}`],
  },
};

export default function () {
  // Stage boundaries in seconds: 10 + 2 + HOLD + 2, then recovery.
  const hold = parseFloat(HOLD);
  const elapsed = (Date.now() - exec.scenario.startTime) / 1000;
  const phase = elapsed < 10 ? 'baseline' : elapsed < 14 + hold ? 'spike' : 'recovery';
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: TEXTS[__ITER % TEXTS.length] }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict', phase },
    timeout: '10s',
  });
  overloaded.add(res.status === 429);
  check(res, { 'answered 200 or 429': (r) => r.status === 200 || r.status === 429 });
}
