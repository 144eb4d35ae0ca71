// Unit tests of the browser client's logic (Sources/SwitchboardServer/Resources/web/switchboard.js)
// with a fake WebSocket; no npm, no network. Run: node --test Tests/JavaScript/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Client, SwitchboardError, backoffDelay } = require('../../Sources/SwitchboardServer/Resources/web/switchboard.js');

/** A stand-in for the browser WebSocket: records what the client sends; the test plays the gateway. */
class FakeWS {
  static instances = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWS.instances.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // gateway side
  open() {
    this.readyState = 1;
    this.onopen && this.onopen({});
  }
  receive(frame) {
    this.onmessage && this.onmessage({ data: JSON.stringify(frame) });
  }
  welcome(user = 'alice', gateway = 'gw-1') {
    this.open();
    this.receive({ type: 'welcome', user, gateway });
  }
  drop(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose && this.onclose({ code, reason });
  }
  last() {
    return this.sent[this.sent.length - 1];
  }
}

const latest = () => FakeWS.instances[FakeWS.instances.length - 1];
const tick = () => new Promise((resolve) => setTimeout(resolve, 0));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met within ' + ms + ' ms');
    await sleep(2);
  }
}

function makeClient(options = {}) {
  FakeWS.instances = [];
  return new Client({ url: 'ws://gw.test/ws', user: 'alice', WebSocket: FakeWS, minDelayMs: 5, maxDelayMs: 40, ...options });
}

async function connected(client) {
  const ready = client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome();
  return ready;
}

test('connect() puts the user or token in the URL and resolves on welcome', async () => {
  const client = makeClient({ user: 'bob smith' });
  const welcomes = [];
  client.on('welcome', (w) => welcomes.push(w));
  const info = await connected(client);
  assert.equal(latest().url, 'ws://gw.test/ws?user=bob%20smith');
  assert.deepEqual(info, { user: 'alice', gateway: 'gw-1' });
  assert.deepEqual(welcomes, [{ user: 'alice', gateway: 'gw-1' }]);
  assert.equal(client.gateway, 'gw-1');
  assert.equal(client.state, 'ready');
  client.close();

  const tokened = makeClient({ user: undefined, url: 'ws://gw.test/ws?x=1', token: async () => 'a.b/c' });
  tokened.connect();
  await until(() => FakeWS.instances.length > 0);
  assert.equal(latest().url, 'ws://gw.test/ws?x=1&token=a.b%2Fc');
  tokened.close();
});

test('an ack resolves the request; each frame carries its own id', async () => {
  const client = makeClient();
  await connected(client);
  const ws = latest();
  const sent = client.sendDirect('bob', { text: 'hi' });
  const frame = ws.last();
  assert.equal(frame.type, 'direct');
  assert.equal(frame.to, 'bob');
  assert.deepEqual(frame.data, { text: 'hi' });
  const joined = client.join('lobby');
  assert.notEqual(ws.last().id, frame.id);
  ws.receive({ type: 'ack', id: ws.last().id });
  ws.receive({ type: 'ack', id: frame.id });
  assert.deepEqual(await sent, { type: 'ack', id: frame.id });
  await joined;
  assert.deepEqual(client.rooms, ['lobby']);
  const pinged = client.ping();
  ws.receive({ type: 'pong', id: ws.last().id });
  assert.equal(typeof (await pinged), 'number');
  client.close();
});

test('an error frame rejects with its code; one without an id is an error event', async () => {
  const client = makeClient();
  await connected(client);
  const ws = latest();
  const errors = [];
  client.on('error', (e) => errors.push(e));
  const sent = client.sendDirect('carol', 1);
  ws.receive({ type: 'error', id: ws.last().id, code: 'recipient_offline', message: 'no gateway hosts the recipient' });
  await assert.rejects(sent, (e) => e instanceof SwitchboardError && e.code === 'recipient_offline' && /no gateway/.test(e.message));
  const published = client.publish('nowhere', 'x');
  ws.receive({ type: 'error', id: ws.last().id, code: 'not_member', message: 'not a member' });
  await assert.rejects(published, { code: 'not_member' });
  ws.receive({ type: 'error', code: 'unknown_type', message: 'unknown type' });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'unknown_type');
  client.close();
});

test('no ack within ackTimeoutMs rejects with timeout', async () => {
  const client = makeClient({ ackTimeoutMs: 20 });
  await connected(client);
  const started = Date.now();
  await assert.rejects(client.publish('lobby', 1), { code: 'timeout' });
  assert.ok(Date.now() - started >= 15);
  // A late ack is ignored.
  latest().receive({ type: 'ack', id: latest().last().id });
  client.close();
});

test('requests while disconnected reject at once with not_connected; a close rejects pending ones', async () => {
  const client = makeClient();
  await assert.rejects(client.sendDirect('bob', 1), { code: 'not_connected' });
  await connected(client);
  const pending = client.publish('lobby', 1);
  latest().drop(1006);
  await assert.rejects(pending, { code: 'connection_closed' });
  await assert.rejects(client.join('lobby'), { code: 'not_connected' });
  assert.deepEqual(client.rooms, []);
  client.close();
});

test('backoffDelay: full jitter under a cap that doubles up to the maximum', () => {
  assert.equal(backoffDelay(0, 500, 30000, () => 0), 0);
  assert.equal(backoffDelay(0, 500, 30000, () => 0.999999), 499);
  assert.equal(backoffDelay(3, 500, 30000, () => 0.5), 2000);
  assert.equal(backoffDelay(10, 500, 30000, () => 0.5), 15000);
  assert.equal(backoffDelay(1000, 500, 30000, () => 0.999999), 29999);
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = Math.min(30000, 500 * 2 ** attempt);
    for (let i = 0; i < 50; i++) {
      const delay = backoffDelay(attempt, 500, 30000);
      assert.ok(delay >= 0 && delay < cap, `attempt ${attempt}: ${delay} not in [0, ${cap})`);
    }
  }
});

test('reconnect delays stay within the jittered bounds, grow, and reset after a welcome', async () => {
  const client = makeClient({ minDelayMs: 4, maxDelayMs: 16, random: () => 0.999 });
  const scheduled = [];
  client.on('reconnecting', (r) => scheduled.push(r));
  const closes = [];
  client.on('close', (c) => closes.push(c));
  client.connect();
  for (let i = 0; i < 5; i++) {
    await until(() => FakeWS.instances.length === i + 1);
    latest().drop(1006);
  }
  assert.deepEqual(
    scheduled.map((r) => r.attempt),
    [1, 2, 3, 4, 5]
  );
  // Caps 4, 8, 16, 16, 16 with random() = 0.999.
  assert.deepEqual(
    scheduled.map((r) => r.delayMs),
    [3, 7, 15, 15, 15]
  );
  assert.ok(closes.every((c) => c.willReconnect === true && c.code === 1006));
  await until(() => FakeWS.instances.length === 6);
  latest().welcome();
  latest().drop(1012, 'draining');
  assert.deepEqual(scheduled[scheduled.length - 1], { attempt: 1, delayMs: 3 });
  client.close();
});

test('rooms are re-joined after each reconnect, after the welcome, and a rejoined event reports them', async () => {
  const client = makeClient();
  await connected(client);
  let ws = latest();
  for (const room of ['lobby', 'news']) {
    const joined = client.join(room);
    ws.receive({ type: 'ack', id: ws.last().id });
    await joined;
  }
  const left = client.leave('news');
  ws.receive({ type: 'ack', id: ws.last().id });
  await left;
  const rejoined = [];
  client.on('rejoined', (r) => rejoined.push(r));

  ws.drop(1012, 'draining');
  assert.equal(client.state, 'reconnecting');
  await until(() => FakeWS.instances.length === 2);
  ws = latest();
  ws.open();
  assert.equal(ws.sent.length, 0, 'nothing is re-joined before the welcome');
  ws.receive({ type: 'welcome', user: 'alice', gateway: 'gw-2' });
  assert.deepEqual(ws.sent.map((f) => [f.type, f.room]), [['join', 'lobby']]);
  ws.receive({ type: 'ack', id: ws.last().id });
  await until(() => rejoined.length === 1);
  assert.deepEqual(rejoined[0], { rooms: ['lobby'], failed: [] });
  assert.equal(client.gateway, 'gw-2');

  // A permanent refusal forgets the room; it is reported as an error event.
  const errors = [];
  client.on('error', (e) => errors.push(e));
  ws.drop(1006);
  await until(() => FakeWS.instances.length === 3);
  ws = latest();
  ws.welcome();
  ws.receive({ type: 'error', id: ws.last().id, code: 'forbidden', message: 'room limit' });
  await until(() => rejoined.length === 2);
  assert.equal(rejoined[1].failed[0].room, 'lobby');
  assert.equal(errors[0].code, 'forbidden');
  assert.equal(errors[0].room, 'lobby');
  assert.deepEqual(client.rooms, []);
  client.close();
});

test('close() stops reconnecting, also while a reconnect is scheduled', async () => {
  const client = makeClient({ minDelayMs: 30, maxDelayMs: 30, random: () => 0.99 });
  await connected(client);
  const closes = [];
  client.on('close', (c) => closes.push(c));
  const ws = latest();
  client.close(1000, 'bye');
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'bye' });
  assert.deepEqual(closes, [{ code: 1000, reason: 'bye', willReconnect: false }]);
  await sleep(80);
  assert.equal(FakeWS.instances.length, 1);

  client.connect();
  await until(() => FakeWS.instances.length === 2);
  latest().drop(1006);
  assert.equal(client.state, 'reconnecting');
  client.close();
  await sleep(80);
  assert.equal(FakeWS.instances.length, 2);
  assert.equal(client.state, 'idle');
});

test('close code 1008 stops reconnecting unless a token function can fetch a fresh token', async () => {
  const client = makeClient();
  const ready = connected(client);
  await ready;
  const closes = [];
  client.on('close', (c) => closes.push(c));
  latest().drop(1008, 'token expired');
  assert.deepEqual(closes, [{ code: 1008, reason: 'token expired', willReconnect: false }]);
  assert.equal(client.state, 'stopped');
  await sleep(30);
  assert.equal(FakeWS.instances.length, 1);

  let issued = 0;
  const refreshing = makeClient({ user: undefined, getToken: () => 'token-' + ++issued });
  await connected(refreshing);
  latest().drop(1008, 'token expired');
  await until(() => FakeWS.instances.length === 2);
  assert.equal(latest().url, 'ws://gw.test/ws?token=token-2');
  refreshing.close();
});

test('direct, room and broadcast frames become events; off() removes a listener', async () => {
  const client = makeClient();
  await connected(client);
  const directs = [];
  const rooms = [];
  const everyone = [];
  client.on('direct', (m) => directs.push(m));
  const stop = client.on('room', (m) => rooms.push(m));
  client.on('broadcast', (m) => everyone.push(m));
  latest().receive({ type: 'direct', from: 'bob', to: 'alice', data: 'psst' });
  latest().receive({ type: 'room', room: 'lobby', from: 'bob', data: { text: 'hi' } });
  latest().receive({ type: 'broadcast', from: 'server', data: 'maintenance' });
  stop();
  latest().receive({ type: 'room', room: 'lobby', from: 'bob', data: 2 });
  assert.deepEqual(directs, [{ from: 'bob', to: 'alice', data: 'psst' }]);
  assert.deepEqual(rooms, [{ room: 'lobby', from: 'bob', data: { text: 'hi' } }]);
  assert.deepEqual(everyone, [{ from: 'server', data: 'maintenance' }]);
  client.close();
});
