// Soak: a moderate constant arrival rate for a long time (default 30 min; set DURATION) to find
// leaks and drift. Three iterations in four are /predict, the fourth a CloudEvent batch (binary and
// structured in turn); every third CloudEvent of a VU is a redelivery of its previous one, which
// must get the same reply id. `python -m loadtests.soak` (make soak) runs it beside a sampler of the
// function's resident memory, open files and threads; `python -m loadtests.run soak` prints RSS at
// the start and the end.
//   k6 run -e BASE_URL=... -e RATE=20 -e DURATION=30m loadtests/scenarios/soak.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const RATE = Number(__ENV.RATE || 20);
const CE_EVERY = Number(__ENV.CE_EVERY || 4); // every CE_EVERY-th iteration is a CloudEvent
const REDELIVER_EVERY = Number(__ENV.REDELIVER_EVERY || 3); // every n-th CloudEvent is resent
const BATCH = Number(__ENV.BATCH || 4);
const REQUEST_TYPE = 'dev.kubesentiment.sentiment.requested';
const TEXTS = [
  'The battery lasts all day and the screen is gorgeous.',
  'Terrible support, I waited two weeks for a reply.',
  'It arrived on Tuesday.',
  'Not bad at all, though the manual is confusing.',
  'I would not buy this again, the hinge broke after a month.',
  'Exactly what the description promised.',
  'The sound is fine but the app keeps crashing.',
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

let previous = null; // this VU's last CloudEvent: { params, body, replyId }
let events = 0;

function replyId(res, structured) {
  if (res.status !== 200) return undefined;
  return structured ? res.json('id') : res.headers['Ce-Id'];
}

function cloudEvent() {
  events += 1;
  if (previous !== null && events % REDELIVER_EVERY === 0) {
    const res = http.post(`${BASE_URL}/`, previous.body, previous.params);
    const first = previous;
    previous = null;
    check(res, {
      'event 200': (r) => r.status === 200,
      'a redelivery gets the same reply id': (r) => replyId(r, first.structured) === first.replyId,
    });
    return;
  }
  const id = `soak-${__VU}-${__ITER}`;
  const items = [];
  for (let i = 0; i < BATCH; i++) {
    items.push({ id: `${id}-${i}`, text: `${TEXTS[(__ITER + i) % TEXTS.length]} (${__ITER % 50})` });
  }
  const structured = events % 2 === 0;
  let body;
  let params;
  if (structured) {
    body = JSON.stringify({ specversion: '1.0', id, source: '/loadtests/soak', type: REQUEST_TYPE,
      datacontenttype: 'application/json', data: { items } });
    params = { headers: { 'Content-Type': 'application/cloudevents+json' }, tags: { name: 'event' } };
  } else {
    body = JSON.stringify({ items });
    params = {
      headers: { 'Content-Type': 'application/json', 'ce-specversion': '1.0', 'ce-id': id,
        'ce-source': '/loadtests/soak', 'ce-type': REQUEST_TYPE },
      tags: { name: 'event' },
    };
  }
  const res = http.post(`${BASE_URL}/`, body, params);
  check(res, { 'event 200': (r) => r.status === 200 });
  previous = { params: { ...params, tags: { name: 'redelivery' } }, body, structured,
    replyId: replyId(res, structured) };
}

export default function () {
  if (__ITER % CE_EVERY === CE_EVERY - 1) {
    cloudEvent();
    return;
  }
  const text = `${TEXTS[__ITER % TEXTS.length]} #${__ITER % 100}`;
  const res = http.post(`${BASE_URL}/predict`, JSON.stringify({ text }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'predict' },
  });
  check(res, { 'predict 200': (r) => r.status === 200 });
}
