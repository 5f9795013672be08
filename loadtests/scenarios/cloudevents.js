// CloudEvents batch: Knative Eventing delivers events in binary mode (ce-* headers) or structured
// mode (application/cloudevents+json); both must answer 200 with a reply event of type
// dev.kubesentiment.sentiment.completed carrying one result per item.
//   k6 run -e BASE_URL=... -e RATE=5 -e BATCH=32 -e DURATION=30s loadtests/scenarios/cloudevents.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const BATCH = Number(__ENV.BATCH || 32);
const REQUEST_TYPE = 'dev.kubesentiment.sentiment.requested';
const REPLY_TYPE = 'dev.kubesentiment.sentiment.completed';
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
    events: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 5),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: Number(__ENV.PRE_VUS || 8),
      maxVUs: Number(__ENV.MAX_VUS || 32),
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    'http_req_duration{expected_response:true}': [`p(95)<${Number(__ENV.P95_MS || 2000)}`],
  },
};

function items() {
  const out = [];
  for (let i = 0; i < BATCH; i++) out.push({ id: `item-${i}`, text: TEXTS[i % TEXTS.length] });
  return out;
}

function resultCount(body) {
  const data = body && body.data !== undefined ? body.data : body;
  return data && data.results ? data.results.length : -1;
}

export default function () {
  const id = `k6-${__VU}-${__ITER}`;
  const data = { items: items() };
  let res;
  let replyType;
  if (__ITER % 2 === 0) {
    res = http.post(`${BASE_URL}/`, JSON.stringify(data), {
      headers: {
        'Content-Type': 'application/json',
        'ce-specversion': '1.0',
        'ce-id': id,
        'ce-source': '/loadtests/cloudevents',
        'ce-type': REQUEST_TYPE,
      },
      tags: { name: 'binary' },
    });
    replyType = res.headers['Ce-Type'];
  } else {
    const event = { specversion: '1.0', id, source: '/loadtests/cloudevents', type: REQUEST_TYPE,
      datacontenttype: 'application/json', data };
    res = http.post(`${BASE_URL}/`, JSON.stringify(event), {
      headers: { 'Content-Type': 'application/cloudevents+json' },
      tags: { name: 'structured' },
    });
    replyType = res.headers['Ce-Type'] || (res.status === 200 ? res.json('type') : undefined);
  }
  check(res, {
    'event 200': (r) => r.status === 200,
    'reply type differs from the request (no Broker loop)': () => replyType === REPLY_TYPE,
    'one result per item': (r) => r.status === 200 && resultCount(r.json()) === BATCH,
  });
}
