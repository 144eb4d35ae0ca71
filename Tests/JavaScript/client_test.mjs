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
  welcome(user = 'alice', gateway = 'gw-1', position = undefined) {
    this.open();
    this.receive(position ? { type: 'welcome', user, gateway, position } : { type: 'welcome', user, gateway });
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

// ----- stream recovery (gateway with --history; the wire contract is docs/protocol.md) -----

const pos = (epoch, offset) => ({ epoch, offset });
const direct = (offset, epoch = 'E', data = 'm' + offset) => ({ type: 'direct', from: 'bob', to: 'alice', data, offset, epoch });
const roomFrame = (room, offset, epoch = 'R') => ({ type: 'room', room, from: 'bob', data: room + offset, offset, epoch });

/** A client that records its direct/room/recovered/error events. */
function recording(options) {
  const client = makeClient(options);
  const seen = { direct: [], room: [], recovered: [], error: [], rejoined: [] };
  for (const name of Object.keys(seen)) client.on(name, (e) => seen[name].push(e));
  return { client, seen };
}

/** Drops the current socket and plays the next connection up to its welcome (with `position`, if any). */
async function reconnect(client, position) {
  const count = FakeWS.instances.length;
  latest().drop(1012, 'draining');
  await until(() => FakeWS.instances.length === count + 1);
  latest().welcome('alice', 'gw-2', position);
  return latest();
}

test('history on: a frame at or below the last position of its stream is dropped, also across a reconnect', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 4));
  assert.deepEqual(client.positions(), { user: pos('E', 4), rooms: {} });
  latest().receive(direct(4)); // already in the stream when the connection opened
  latest().receive(direct(5));
  latest().receive(direct(6));
  latest().receive(direct(6));
  assert.deepEqual(seen.direct.map((m) => m.offset), [5, 6]);
  assert.deepEqual(seen.direct[0], { from: 'bob', to: 'alice', data: 'm5', offset: 5, epoch: 'E' });

  const ws = await reconnect(client, pos('E', 7));
  ws.receive({ type: 'ack', id: ws.sent[0].id, recovered: true, position: pos('E', 6) });
  // The gateway delivers 5 and 6 once more (a copy in flight when the old socket dropped), then 7.
  ws.receive(direct(5));
  ws.receive(direct(6));
  ws.receive(direct(7));
  assert.deepEqual(seen.direct.map((m) => m.offset), [5, 6, 7]);
  assert.deepEqual(client.positions().user, pos('E', 7));
  client.close();
});

test('after a reconnect the user stream is resumed from the position held, not the welcome\'s', async () => {
  const { client } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 0));
  assert.equal(latest().sent.length, 0, 'the first connection resumes nothing');
  latest().receive(direct(1));
  latest().receive(direct(2));
  const ws = await reconnect(client, pos('E', 9));
  assert.equal(ws.sent.length, 1);
  assert.deepEqual(ws.sent[0], { type: 'resume', since: pos('E', 2), id: ws.sent[0].id });
  assert.equal(typeof ws.sent[0].id, 'string');
  client.close();
});

test('frames held during a resume come out in offset order, each once, then recovered', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 3));
  latest().receive(direct(4));
  latest().receive(direct(5));
  const ws = await reconnect(client, pos('E', 11));
  const resume = ws.sent[0];
  assert.deepEqual(resume.since, pos('E', 5));
  // A live message overtakes the replay of 6…11; 9 also comes twice.
  ws.receive(direct(12));
  for (const offset of [6, 7, 8, 9, 9, 10, 11]) ws.receive(direct(offset));
  assert.deepEqual(seen.direct.map((m) => m.offset), [4, 5], 'nothing is handed on before the ack');
  assert.deepEqual(client.positions().user, pos('E', 5));
  ws.receive({ type: 'ack', id: resume.id, recovered: true, position: pos('E', 12) });
  assert.deepEqual(seen.direct.map((m) => m.offset), [4, 5, 6, 7, 8, 9, 10, 11, 12]);
  assert.deepEqual(seen.recovered, [{ stream: 'user', recovered: true, position: pos('E', 12), delivered: 7 }]);
  ws.receive(direct(12));
  ws.receive(direct(13));
  assert.deepEqual(seen.direct.map((m) => m.offset).slice(-2), [12, 13]);
  assert.deepEqual(client.positions().user, pos('E', 13));
  client.close();
});

test('rooms are re-joined with since = their position; their frames are held until the join ack', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 0));
  let ws = latest();
  const joined = client.join('lobby');
  ws.receive({ type: 'ack', id: ws.last().id, position: pos('R', 2) });
  assert.equal((await joined).position.offset, 2);
  ws.receive(roomFrame('lobby', 3));
  assert.deepEqual(client.positions(), { user: pos('E', 0), rooms: { lobby: pos('R', 3) } });

  ws = await reconnect(client, pos('E', 0));
  assert.deepEqual(ws.sent.map((f) => [f.type, f.since]), [['resume', pos('E', 0)], ['join', pos('R', 3)]]);
  assert.equal(ws.sent[1].room, 'lobby');
  ws.receive(roomFrame('lobby', 6)); // live, before the replay of 4 and 5
  ws.receive(roomFrame('lobby', 4));
  ws.receive(roomFrame('lobby', 5));
  ws.receive(direct(1)); // held too, until the resume's ack just below
  assert.deepEqual(seen.room.map((m) => m.offset), [3]);
  ws.receive({ type: 'ack', id: ws.sent[0].id, recovered: true, position: pos('E', 0) });
  ws.receive({ type: 'ack', id: ws.sent[1].id, recovered: true, position: pos('R', 6) });
  assert.deepEqual(seen.room.map((m) => m.offset), [3, 4, 5, 6]);
  assert.deepEqual(seen.room[1], { room: 'lobby', from: 'bob', data: 'lobby4', offset: 4, epoch: 'R' });
  assert.deepEqual(seen.recovered[1], { stream: 'room', room: 'lobby', recovered: true, position: pos('R', 6), delivered: 3 });
  await until(() => seen.rejoined.length === 1);
  assert.deepEqual(seen.rejoined[0], { rooms: ['lobby'], failed: [] });
  // The user stream's hold ended with its own ack, independently of the room's.
  assert.deepEqual(seen.direct.map((m) => m.offset), [1]);
  client.close();
});

test('recovered:false is reported, the held position is dropped and the ack position taken', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 8));
  latest().receive(direct(9));
  // The history store lost data but kept the epoch: the gateway's top (4) is below the client's 9.
  let ws = await reconnect(client, pos('E', 4));
  ws.receive({ type: 'ack', id: ws.sent[0].id, recovered: false, reason: 'ahead', position: pos('E', 4) });
  assert.deepEqual(seen.recovered, [{ stream: 'user', recovered: false, reason: 'ahead', position: pos('E', 4), delivered: 0 }]);
  assert.deepEqual(client.positions().user, pos('E', 4));
  ws.receive(direct(5)); // new, although 5 < 9: dropped if the old position had been kept
  assert.deepEqual(seen.direct.map((m) => m.offset), [9, 5]);

  // The stream was re-created (epoch F). A live message that came while the resume was
  // unanswered and is at or below the ack's position is the app's to reload, not handed on
  // (as the Swift client does); one after it is; the next resume starts from there.
  ws = await reconnect(client, pos('F', 1));
  assert.deepEqual(ws.sent[0].since, pos('E', 5));
  ws.receive(direct(2, 'F'));
  ws.receive(direct(3, 'F'));
  ws.receive({ type: 'ack', id: ws.sent[0].id, recovered: false, reason: 'epoch_changed', position: pos('F', 2) });
  assert.deepEqual(seen.direct.map((m) => [m.epoch, m.offset]).slice(-1), [['F', 3]]);
  assert.deepEqual(seen.recovered[1], { stream: 'user', recovered: false, reason: 'epoch_changed', position: pos('F', 3), delivered: 1 });
  ws.receive(direct(2, 'F'));
  assert.equal(seen.direct.length, 3);
  ws = await reconnect(client, pos('F', 3));
  assert.deepEqual(ws.sent[0].since, pos('F', 3));
  client.close();
});

test('a frame in another epoch is accepted and its epoch adopted', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 20));
  latest().receive(direct(1, 'F')); // offset 1 < 20, but the stream was re-created
  assert.deepEqual(seen.direct.map((m) => [m.epoch, m.offset]), [['F', 1]]);
  assert.deepEqual(client.positions().user, pos('F', 1));
  latest().receive(direct(1, 'F'));
  latest().receive(direct(2, 'F'));
  assert.deepEqual(seen.direct.map((m) => m.offset), [1, 2]);
  client.close();
});

test('a drop during a resume hands on only the gapless run after the position; the next resume continues from it', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 5));
  let ws = await reconnect(client, pos('E', 11));
  ws.receive(direct(12));
  ws.receive(direct(6));
  ws.receive(direct(7));
  ws = await reconnect(client, pos('E', 12));
  assert.deepEqual(seen.direct.map((m) => m.offset), [6, 7]);
  assert.deepEqual(ws.sent[0].since, pos('E', 7));
  assert.equal(seen.recovered.length, 0);
  client.close();
});

test('a refused resume is an error event and recovered:false, sent once; a room falls back to a plain join', async () => {
  const { client, seen } = recording();
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 1));
  let ws = latest();
  const joined = client.join('lobby');
  ws.receive({ type: 'ack', id: ws.last().id, position: pos('R', 1) });
  await joined;

  ws = await reconnect(client, pos('E', 4));
  const [resume, join] = ws.sent;
  assert.deepEqual([resume.type, join.type, join.since], ['resume', 'join', pos('R', 1)]);
  ws.receive(direct(5)); // live, held
  ws.receive({ type: 'error', id: resume.id, code: 'history_unavailable', message: 'history store down' });
  assert.deepEqual(seen.error.map((e) => [e.code, e.stream]), [['history_unavailable', 'user']]);
  assert.deepEqual(seen.recovered, [{ stream: 'user', recovered: false, reason: 'history_unavailable', position: pos('E', 5), delivered: 1 }]);

  ws.receive({ type: 'error', id: join.id, code: 'already_resumed', message: 'since twice' });
  assert.equal(seen.error[1].room, 'lobby');
  assert.deepEqual(ws.last(), { type: 'join', room: 'lobby', id: ws.last().id }, 'joined again without since');
  ws.receive({ type: 'ack', id: ws.last().id, position: pos('R', 3) });
  assert.deepEqual(seen.recovered[1], { stream: 'room', room: 'lobby', recovered: false, reason: 'already_resumed', position: pos('R', 3), delivered: 0 });
  await until(() => seen.rejoined.length === 1);
  assert.deepEqual(seen.rejoined[0], { rooms: ['lobby'], failed: [] });
  await sleep(20);
  assert.equal(ws.sent.length, 3, 'nothing is retried on this connection');
  assert.equal(ws.sent.filter((f) => f.type === 'resume').length, 1);

  // history_disabled on the plain join's since is no different; a room refused for good is forgotten.
  ws = await reconnect(client, pos('E', 5));
  ws.receive({ type: 'error', id: ws.sent[1].id, code: 'history_disabled', message: 'no history' });
  ws.receive({ type: 'error', id: ws.last().id, code: 'forbidden', message: 'not allowed' });
  await until(() => seen.rejoined.length === 2);
  assert.equal(seen.rejoined[1].failed[0].error.code, 'forbidden');
  assert.deepEqual(client.rooms, []);
  assert.deepEqual(client.positions().rooms, {});
  client.close();
});

test('resumeFrom: the first connection resumes and joins the saved rooms', async () => {
  const { client } = recording({ resumeFrom: { user: pos('E', 3), rooms: { lobby: pos('R', 7), news: null } } });
  assert.deepEqual(client.rooms, ['lobby', 'news']);
  assert.deepEqual(client.positions(), { user: pos('E', 3), rooms: { lobby: pos('R', 7) } });
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  latest().welcome('alice', 'gw-1', pos('E', 3));
  assert.deepEqual(
    latest().sent.map((f) => [f.type, f.room, f.since]),
    [['resume', undefined, pos('E', 3)], ['join', 'lobby', pos('R', 7)], ['join', 'news', undefined]]
  );
  client.close();
});

test('history off: no resume, no since, no dedupe, no recovered event, no positions', async () => {
  const { client, seen } = recording({ resumeFrom: { user: pos('E', 3), rooms: { lobby: pos('R', 7) } } });
  client.connect();
  await until(() => FakeWS.instances.length > 0);
  let ws = latest();
  ws.welcome(); // no position: this gateway keeps no history
  assert.deepEqual(ws.sent.map((f) => Object.keys(f).sort()), [['id', 'room', 'type']], 'a plain join');
  ws.receive({ type: 'ack', id: ws.last().id });
  ws.receive({ type: 'direct', from: 'bob', to: 'alice', data: 'same' });
  ws.receive({ type: 'direct', from: 'bob', to: 'alice', data: 'same' });
  ws.receive({ type: 'room', room: 'lobby', from: 'bob', data: 1 });
  assert.deepEqual(seen.direct, [{ from: 'bob', to: 'alice', data: 'same' }, { from: 'bob', to: 'alice', data: 'same' }]);
  assert.deepEqual(seen.room, [{ room: 'lobby', from: 'bob', data: 1 }]);
  assert.deepEqual(client.positions(), { user: null, rooms: {} });
  ws = await reconnect(client);
  assert.deepEqual(ws.sent.map((f) => [f.type, f.room, f.since]), [['join', 'lobby', undefined]]);
  ws.receive({ type: 'ack', id: ws.last().id });
  await until(() => seen.rejoined.length === 2);
  assert.equal(seen.recovered.length, 0);
  client.close();
});

test('presence: join({presence: true}) asks for events and re-joins ask again; presence() answers; joined/left are events', async () => {
  const client = makeClient();
  await connected(client);
  let ws = latest();
  const joined = client.join('lobby', { presence: true });
  assert.deepEqual(ws.last(), { type: 'join', room: 'lobby', presence: true, id: ws.last().id });
  ws.receive({ type: 'ack', id: ws.last().id });
  await joined;
  const plain = client.join('news');
  assert.equal(ws.last().presence, undefined, 'no flag unless asked');
  ws.receive({ type: 'ack', id: ws.last().id });
  await plain;

  const asked = client.presence('lobby');
  assert.deepEqual(ws.last(), { type: 'presence', room: 'lobby', id: ws.last().id });
  ws.receive({ type: 'presence', room: 'lobby', id: ws.last().id, users: [{ user: 'bob', connections: 2 }], count: 3, truncated: true });
  assert.deepEqual(await asked, { room: 'lobby', users: [{ user: 'bob', connections: 2 }], count: 3, truncated: true });
  const refused = client.presence('elsewhere');
  ws.receive({ type: 'error', id: ws.last().id, code: 'not_member', message: 'join first' });
  await assert.rejects(refused, (e) => e.code === 'not_member');

  const events = [];
  client.on('joined', (e) => events.push(['joined', e]));
  client.on('left', (e) => events.push(['left', e]));
  ws.receive({ type: 'joined', room: 'lobby', user: 'bob' });
  ws.receive({ type: 'left', room: 'lobby', user: 'bob' });
  assert.deepEqual(events, [['joined', { room: 'lobby', user: 'bob' }], ['left', { room: 'lobby', user: 'bob' }]]);

  ws.drop(1012, 'draining');
  await until(() => FakeWS.instances.length === 2);
  ws = latest();
  ws.welcome();
  assert.deepEqual(ws.sent.map((f) => [f.room, f.presence]), [['lobby', true], ['news', undefined]], 're-joins keep the choice');
  client.close();
});
