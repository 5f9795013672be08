// Closed-loop throughput for the benchmark: VUS virtual users each send single-text predictions
// back to back for DURATION. benchmarks/bench.py runs it at 1, 8 and 32 VUs against each server.
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const TEXTS = JSON.parse(open('./texts.json'));

export const options = {
  scenarios: {
    closed: { executor: 'constant-vus', vus: Number(__ENV.VUS || 1), duration: __ENV.DURATION || '10s' },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const text = TEXTS[(__VU * 7 + __ITER) % TEXTS.length];
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text }), {
    headers: { 'Content-Type': 'application/json' },
    timeout: '60s',
  });
  check(res, { 'predict 200': (r) => r.status === 200 });
}
