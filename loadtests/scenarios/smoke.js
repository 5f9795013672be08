// Smoke: one VU walks every route once per iteration and checks the answers. Part of `make test`.
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e DURATION=5s loadtests/scenarios/smoke.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const P95_MS = Number(__ENV.P95_MS || 1000);
const TEXTS = [
  'The battery lasts all day and the screen is gorgeous.',
  'Terrible support, I waited two weeks for a reply.',
  'It arrived on Tuesday.',
  'Not bad at all, though the manual is confusing.',
];
const LABELS = ['negative', 'neutral', 'positive'];
const JSON_HEADERS = { 'Content-Type': 'application/json' };

export const options = {
  scenarios: {
    smoke: { executor: 'constant-vus', vus: Number(__ENV.VUS || 1), duration: __ENV.DURATION || '5s' },
  },
  thresholds: {
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
    'http_req_duration{expected_response:true}': [`p(95)<${P95_MS}`],
  },
};

export default function () {
  const ready = http.get(`${BASE_URL}/health/readiness`, { tags: { name: 'readiness' } });
  check(ready, { 'readiness 200': (r) => r.status === 200 });

  const one = http.post(`${BASE_URL}/predict`, JSON.stringify({ text: TEXTS[__ITER % TEXTS.length] }), {
    headers: JSON_HEADERS,
    tags: { name: 'predict' },
  });
  check(one, {
    'predict 200': (r) => r.status === 200,
    'predict has a known label': (r) => LABELS.includes(r.json('label')),
    'predict score is a polarity in [-1, 1]': (r) => Math.abs(r.json('score')) <= 1,
    'predict probabilities sum to 1': (r) =>
      Math.abs(Object.values(r.json('probabilities')).reduce((a, b) => a + b, 0) - 1) < 1e-3,
  });

  const batch = http.post(`${BASE_URL}/predict`, JSON.stringify({ texts: TEXTS }), {
    headers: JSON_HEADERS,
    tags: { name: 'predict batch' },
  });
  check(batch, {
    'batch 200': (r) => r.status === 200,
    'batch has one result per text': (r) => (r.json('results') || []).length === TEXTS.length,
  });

  const event = http.post(`${BASE_URL}/`, JSON.stringify({ texts: TEXTS.slice(0, 2) }), {
    headers: {
      ...JSON_HEADERS,
      'ce-specversion': '1.0',
      'ce-id': `smoke-${__VU}-${__ITER}`,
      'ce-source': '/loadtests/smoke',
      'ce-type': 'dev.kubesentiment.sentiment.requested',
    },
    tags: { name: 'cloudevent' },
  });
  check(event, {
    'cloudevent 200': (r) => r.status === 200,
    'cloudevent reply type': (r) => r.headers['Ce-Type'] === 'dev.kubesentiment.sentiment.completed',
  });

  const model = http.get(`${BASE_URL}/model`, { tags: { name: 'model' } });
  check(model, { 'model 200': (r) => r.status === 200 });

  const metrics = http.get(`${BASE_URL}/metrics`, { tags: { name: 'metrics' } });
  check(metrics, { 'metrics expose requests': (r) => r.body.includes('kubesentiment_http_requests_total') });
}
