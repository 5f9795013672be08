// Cold start: the runner spawns the function and starts k6 at the same moment, passing the spawn
// time in SPAWNED_AT_MS (epoch ms). One VU polls POST /predict until the first 200 and records the
// time from spawn to that answer, which is what a request arriving at a scaled-to-zero revision
// waits for (plus Knative's pod scheduling). Refused connections and 503s while loading are
// expected, so only the final outcome is checked.
//   python -m loadtests.run coldstart        (k6 alone cannot start the function)
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Trend } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const SPAWNED_AT_MS = Number(__ENV.SPAWNED_AT_MS || Date.now());
const TIMEOUT_S = Number(__ENV.COLD_TIMEOUT_S || 60);
const coldStart = new Trend('cold_start_ms', true);

http.setResponseCallback(http.expectedStatuses(200, 503));

export const options = {
  scenarios: {
    cold: { executor: 'per-vu-iterations', vus: 1, iterations: 1, maxDuration: `${TIMEOUT_S + 5}s` },
  },
  thresholds: {
    checks: ['rate==1'],
    cold_start_ms: [`max<${Number(__ENV.COLD_BUDGET_MS || 10000)}`], // the KubeSentimentSlowColdStart budget
  },
};

export default function () {
  const deadline = SPAWNED_AT_MS + TIMEOUT_S * 1000;
  let res = null;
  while (Date.now() < deadline) {
    res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: 'Cold starts should be quick.' }), {
      headers: { 'Content-Type': 'application/json' },
      tags: { name: 'predict' },
      timeout: '5s',
    });
    if (res.status === 200) break;
    sleep(0.02);
  }
  const ok = res !== null && res.status === 200;
  if (ok) coldStart.add(Date.now() - SPAWNED_AT_MS);
  check(res, { 'first prediction within the timeout': () => ok });
}
