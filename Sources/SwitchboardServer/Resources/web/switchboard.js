/*
 * switchboard.js: a browser client for a Switchboard gateway (wire protocol v1,
 * docs/protocol.md). No build step, no dependencies.
 *
 *   <script src="/switchboard.js"></script>
 *   <script>
 *     const client = new Switchboard.Client({ user: 'alice' });   // or { token: '…' }
 *     client.on('welcome', (w) => console.log('on', w.gateway));
 *     client.on('direct', (m) => console.log(m.from, m.data));
 *     client.on('room', (m) => console.log(m.room, m.from, m.data));
 *     client.connect();
 *     await client.join('lobby');
 *     await client.publish('lobby', { text: 'hello' });
 *   </script>
 *
 * Loaded with a classic <script> tag it defines `window.Switchboard`; under
 * CommonJS (Node) it is `module.exports`. docs/clients.md describes the behaviour.
 */
(function (root, factory) {
  'use strict';
  var api = factory();
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
  if (root) root.Switchboard = api;
})(typeof globalThis !== 'undefined' ? globalThis : typeof window !== 'undefined' ? window : this, function () {
  'use strict';

  var OPEN = 1; // WebSocket.OPEN
  var CLOSE_POLICY = 1008;
  // Answers to a `join` with `since` after which the room is joined again without it: the
  // gateway refused only the recovery part (store down, history off, since repeated or malformed).
  var RECOVERY_REFUSALS = { history_unavailable: true, history_disabled: true, already_resumed: true, invalid_message: true };

  /**
   * The error a request's promise is rejected with.
   *
   * `code` is the gateway's error code (`recipient_offline`, `not_member`,
   * `backplane_unavailable`, `invalid_id`, `forbidden`, `rate_limited`, …, see
   * docs/protocol.md) or one of the client's own: `not_connected` (sent while the
   * socket was not open), `timeout` (no ack within `ackTimeoutMs`),
   * `connection_closed` (the socket closed before the ack).
   */
  class SwitchboardError extends Error {
    /**
     * @param {string} code
     * @param {string} message
     * @param {object} [frame] the `error` frame, when the gateway sent one
     */
    constructor(code, message, frame) {
      super(message || code);
      this.name = 'SwitchboardError';
      /** @type {string} */
      this.code = code;
      /** @type {object|undefined} */
      this.frame = frame;
    }
  }

  /**
   * Full-jitter exponential backoff: a random delay in [0, min(maxMs, minMs·2^exponent)).
   *
   * @param {number} exponent 0 for the first retry, 1 for the second, …
   * @param {number} minMs
   * @param {number} maxMs
   * @param {() => number} [random] returns [0, 1); Math.random by default
   * @returns {number} milliseconds
   */
  function backoffDelay(exponent, minMs, maxMs, random) {
    var cap = Math.min(maxMs, minMs * Math.pow(2, Math.min(exponent, 52)));
    return Math.floor((random || Math.random)() * cap);
  }

  /**
   * A connection to a Switchboard gateway that reconnects by itself.
   *
   * Events (`on(name, fn)`):
   * - `open` (): the WebSocket opened (the `welcome` frame follows).
   * - `welcome` ({user, gateway}): the gateway accepted the user; the client is ready.
   * - `rejoined` ({rooms, failed}): after a reconnect's `welcome`, every remembered room
   *   was joined again; `rooms` are those that succeeded, `failed` is a list of {room, error}.
   * - `direct` ({from, to, data, offset?, epoch?}): a direct message to this user;
   *   `offset`/`epoch` (its place in the user stream) only when the gateway keeps history.
   * - `room` ({room, from, data, offset?, epoch?}): a message published to a room this
   *   connection is in.
   * - `joined` / `left` ({room, user}): in a room joined with `{presence: true}`, a user's
   *   first connection appeared on any gateway, or their last one is gone everywhere (after
   *   the gateway's grace, so a reconnect or a move between gateways sends neither).
   *   Rooms over the gateway's event limit send none; ask `presence(room)` instead.
   * - `recovered` ({stream: 'user'|'room', room?, recovered, reason?, position, delivered}):
   *   after a reconnect, a `resume` (user stream) or a re-join with `since` (room) was
   *   answered. The messages missed meanwhile came first as `direct`/`room` events
   *   (`delivered` counts them). `recovered: false` means some are lost (`reason`:
   *   `epoch_changed`, `expired`, `limit_exceeded`, `ahead`, or the error code the gateway
   *   refused the request with): reload that stream from your backend up to `position`.
   * - `error` (SwitchboardError): an `error` frame that answers no request of this
   *   client, a room that could not be re-joined (`error.room`), a `resume` the gateway
   *   refused (`error.stream === 'user'`), or a token that could not be fetched.
   * - `close` ({code, reason, willReconnect}): the WebSocket closed.
   * - `reconnecting` ({attempt, delayMs}): the next connection attempt (1, 2, …) starts
   *   in `delayMs`.
   * - `frame` (object): every frame the gateway sends, parsed, before the events above.
   */
  class Client {
    /**
     * @param {object} [options]
     * @param {string} [options.url] WebSocket URL; default ws(s)://location.host/ws
     * @param {string|(() => string|Promise<string>)} [options.token] a JWT, or a function
     *   that returns one (called before every connection attempt), sent as `?token=`
     * @param {() => string|Promise<string>} [options.getToken] same as a function `token`
     * @param {string} [options.user] the user id for a gateway in `--auth none`
     *   (development) mode, sent as `?user=`
     * @param {number} [options.minDelayMs=500] backoff base
     * @param {number} [options.maxDelayMs=30000] backoff cap
     * @param {number} [options.ackTimeoutMs=10000] how long a request waits for its ack
     * @param {boolean} [options.reconnect=true] reconnect after an unexpected close
     * @param {Function} [options.WebSocket] WebSocket constructor (tests inject a fake)
     * @param {() => number} [options.random] random source for the jitter (tests)
     * @param {{user?: Position|null, rooms?: Object<string, Position|null>}} [options.resumeFrom]
     *   positions saved from positions() (e.g. before a page reload): the first connection
     *   resumes the user stream from `user` and joins each of `rooms` (with `since` when it
     *   has a position) as if they had been joined before
     */
    constructor(options) {
      options = options || {};
      this.url = options.url || defaultURL();
      this.token = options.getToken || options.token;
      this.userParam = options.user;
      this.minDelayMs = options.minDelayMs != null ? options.minDelayMs : 500;
      this.maxDelayMs = options.maxDelayMs != null ? options.maxDelayMs : 30000;
      this.ackTimeoutMs = options.ackTimeoutMs != null ? options.ackTimeoutMs : 10000;
      this.reconnect = options.reconnect !== false;
      this.WebSocket = options.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : undefined);
      this.random = options.random || Math.random;
      if (!this.WebSocket) throw new Error('Switchboard: no WebSocket implementation; pass options.WebSocket');

      /**
       * 'idle' (never connected or closed by close()), 'connecting', 'open' (waiting for
       * welcome), 'ready' (welcome received), 'reconnecting' (a reconnect is scheduled) or
       * 'stopped' (the gateway closed with 1008 and no token function is set).
       * @type {string}
       */
      this.state = 'idle';
      /** The user id from the last `welcome`. @type {string|null} */
      this.user = null;
      /** The gateway id from the last `welcome`. @type {string|null} */
      this.gateway = null;

      this._ws = null;
      this._listeners = Object.create(null);
      this._pending = new Map(); // id -> {resolve, reject, timer}
      this._rooms = new Set();
      /** Rooms joined with `{presence: true}`: re-joined so after reconnects. */
      this._presenceRooms = new Set();
      this._nextId = 1;
      this._attempt = 0; // consecutive connection attempts without a welcome
      this._timer = null; // the scheduled reconnect
      this._wanted = false; // connect() was called and close() was not
      this._generation = 0; // bumps on every connection attempt and on close()
      this._readyWaiters = [];
      this._everWelcomed = false;
      // Recovery state per stream: {position: Position|null, held: frame[]|null}. `position`
      // is the last one handed to the application; `held` is set while a resume / join
      // with since is unanswered, since replayed and live frames may then come out of order.
      this._user = { position: null, held: null };
      this._roomStreams = new Map(); // room -> same shape

      var from = options.resumeFrom || {};
      this._user.position = asPosition(from.user);
      var self = this;
      Object.keys(from.rooms || {}).forEach(function (room) {
        self._rooms.add(room);
        self._roomStream(room).position = asPosition(from.rooms[room]);
      });
    }

    /** Rooms this client is in, and re-joins after every reconnect. @type {string[]} */
    get rooms() {
      return Array.from(this._rooms);
    }

    /**
     * The last position of each stream handed to the application, in the shape the
     * `resumeFrom` option takes (save it to resume after a page reload). Empty when the
     * gateway keeps no history.
     * @returns {{user: Position|null, rooms: Object<string, Position>}}
     */
    positions() {
      var rooms = {};
      var self = this;
      this._rooms.forEach(function (room) {
        var stream = self._roomStreams.get(room);
        if (stream && stream.position) rooms[room] = copyPosition(stream.position);
      });
      return { user: this._user.position ? copyPosition(this._user.position) : null, rooms: rooms };
    }

    /** Whether a `welcome` arrived on the current connection. @type {boolean} */
    get connected() {
      return this.state === 'ready';
    }

    /**
     * Starts connecting (and reconnecting, until close()). Resolves with the next
     * `welcome` ({user, gateway}); rejects when close() is called first, or when the
     * gateway closes with 1008 and there is no token function to get a fresh token.
     * @returns {Promise<{user: string, gateway: string}>}
     */
    connect() {
      var self = this;
      var promise = new Promise(function (resolve, reject) {
        if (self.state === 'ready') resolve({ user: self.user, gateway: self.gateway });
        else self._readyWaiters.push({ resolve: resolve, reject: reject });
      });
      // connect() is often called without awaiting it: a rejection nobody asked for
      // must not surface as an unhandled one.
      promise.catch(function () {});
      if (!this._wanted) {
        this._wanted = true;
        this._attempt = 0;
        this._open();
      }
      return promise;
    }

    /**
     * Closes the connection for good: no reconnect. Pending requests are rejected with
     * `connection_closed`. Remembered rooms are kept, so a later connect() re-joins them.
     * @param {number} [code=1000]
     * @param {string} [reason]
     */
    close(code, reason) {
      this._wanted = false;
      this._generation++;
      if (this._timer) {
        clearTimeout(this._timer);
        this._timer = null;
      }
      var ws = this._ws;
      this._ws = null;
      var wasConnected = ws !== null;
      this.state = 'idle';
      if (ws) {
        detach(ws);
        try {
          ws.close(code || 1000, reason || '');
        } catch (e) {
          /* already closing */
        }
      }
      this._failPending('connection_closed', 'the connection was closed');
      this._rejectReady('connection_closed', 'close() was called');
      if (wasConnected) this._emit('close', { code: code || 1000, reason: reason || '', willReconnect: false });
    }

    /**
     * Sends a direct message to every connection of user `to`.
     * Resolves on the ack (the backplane took it); rejects with `recipient_offline`
     * when no gateway hosts `to`. A gateway with history instead resolves with an ack that
     * has `recipient_offline: true`: the message is kept until `to` resumes.
     * @param {string} to
     * @param {*} data any JSON value
     * @returns {Promise<object>} the ack frame
     */
    sendDirect(to, data) {
      return this._request({ type: 'direct', to: to, data: data === undefined ? null : data });
    }

    /**
     * Joins a room; once acked, the room is remembered and re-joined after reconnects.
     * With `{presence: true}` the connection also gets the room's `joined` and `left` events.
     * @param {string} room
     * @param {{presence?: boolean}} [options]
     * @returns {Promise<object>} the ack frame
     */
    join(room, options) {
      var self = this;
      var presence = !!(options && options.presence);
      return this._request(this._joinFrame(room, presence)).then(function (ack) {
        self._rooms.add(room);
        if (presence) self._presenceRooms.add(room);
        else self._presenceRooms.delete(room);
        self._adopt(self._roomStream(room), ack.position);
        return ack;
      });
    }

    /**
     * Who is in a room this connection has joined, across all gateways.
     * Rejects with `not_member`, `presence_disabled` or `presence_unavailable`.
     * @param {string} room
     * @returns {Promise<{room: string, users: {user: string, connections: number}[], count: number, truncated?: boolean}>}
     *   `users` lists at most the gateway's limit (`truncated` then); a user who just went and
     *   may come back within the grace is listed with 0 connections.
     */
    presence(room) {
      return this._request({ type: 'presence', room: room }).then(function (frame) {
        var answer = { room: frame.room, users: frame.users || [], count: frame.count };
        if (frame.truncated) answer.truncated = true;
        return answer;
      });
    }

    _joinFrame(room, presence) {
      var frame = { type: 'join', room: room };
      if (presence) frame.presence = true;
      return frame;
    }

    /**
     * Leaves a room and forgets it. While disconnected it resolves at once: the next
     * connection will not join the room.
     * @param {string} room
     * @returns {Promise<object|null>} the ack frame, or null when disconnected
     */
    leave(room) {
      this._forgetRoom(room);
      if (!this._isOpen()) return Promise.resolve(null);
      return this._request({ type: 'leave', room: room });
    }

    /**
     * Publishes to a room this connection has joined (the sender gets a copy too).
     * Rejects with `not_member` otherwise.
     * @param {string} room
     * @param {*} data any JSON value
     * @returns {Promise<object>} the ack frame
     */
    publish(room, data) {
      return this._request({ type: 'publish', room: room, data: data === undefined ? null : data });
    }

    /**
     * Sends a `ping` frame. Resolves with the round trip in milliseconds.
     * @returns {Promise<number>}
     */
    ping() {
      var started = Date.now();
      return this._request({ type: 'ping' }).then(function () {
        return Date.now() - started;
      });
    }

    /**
     * Adds a listener; returns a function that removes it.
     * @param {string} name
     * @param {Function} fn
     * @returns {() => void}
     */
    on(name, fn) {
      (this._listeners[name] || (this._listeners[name] = [])).push(fn);
      var self = this;
      return function () {
        self.off(name, fn);
      };
    }

    /**
     * Removes a listener added with on().
     * @param {string} name
     * @param {Function} fn
     */
    off(name, fn) {
      var list = this._listeners[name];
      if (!list) return;
      var index = list.indexOf(fn);
      if (index >= 0) list.splice(index, 1);
    }

    // ----- internals -----

    _isOpen() {
      return this._ws !== null && this._ws.readyState === OPEN;
    }

    _emit(name, value) {
      var list = this._listeners[name];
      if (!list) return;
      list.slice().forEach(function (fn) {
        try {
          fn(value);
        } catch (e) {
          if (typeof console !== 'undefined') console.error('Switchboard: a "' + name + '" listener threw', e);
        }
      });
    }

    /**
     * Sends a request frame with a fresh id. `hook(ok, ackOrError)`, when given, runs
     * synchronously as the answer is read, before the promise settles: a recovery must end
     * before the next frame is read, not a microtask later.
     */
    _request(frame, hook) {
      var self = this;
      if (!this._isOpen()) {
        var refused = new SwitchboardError('not_connected', 'not connected to a gateway');
        if (hook) hook(false, refused);
        return Promise.reject(refused);
      }
      var id = 'c' + this._nextId++;
      frame.id = id;
      return new Promise(function (resolve, reject) {
        var entry = { resolve: resolve, reject: reject, timer: null, hook: hook };
        entry.timer = setTimeout(function () {
          if (self._pending.get(id) === entry) {
            self._pending.delete(id);
            finish(entry, false, new SwitchboardError('timeout', 'no answer to ' + frame.type + ' within ' + self.ackTimeoutMs + ' ms'));
          }
        }, self.ackTimeoutMs);
        self._pending.set(id, entry);
        try {
          self._ws.send(JSON.stringify(frame));
        } catch (e) {
          clearTimeout(entry.timer);
          self._pending.delete(id);
          finish(entry, false, new SwitchboardError('not_connected', 'send failed: ' + (e && e.message)));
        }
      });
    }

    _settle(id, ok, value) {
      var entry = this._pending.get(id);
      if (!entry) return false;
      this._pending.delete(id);
      clearTimeout(entry.timer);
      finish(entry, ok, value);
      return true;
    }

    _failPending(code, message) {
      var entries = Array.from(this._pending.values());
      this._pending.clear();
      entries.forEach(function (entry) {
        clearTimeout(entry.timer);
        finish(entry, false, new SwitchboardError(code, message));
      });
    }

    _rejectReady(code, message) {
      var waiters = this._readyWaiters;
      this._readyWaiters = [];
      waiters.forEach(function (w) {
        w.reject(new SwitchboardError(code, message));
      });
    }

    async _open() {
      var generation = ++this._generation;
      this._timer = null;
      this.state = 'connecting';
      var url;
      try {
        url = await this._connectURL();
      } catch (e) {
        if (generation !== this._generation) return;
        this._emit('error', new SwitchboardError('token_unavailable', 'could not get a token: ' + (e && e.message)));
        this._scheduleReconnect();
        return;
      }
      if (generation !== this._generation) return; // close() or another attempt meanwhile
      var ws;
      try {
        ws = new this.WebSocket(url);
      } catch (e) {
        this._emit('error', new SwitchboardError('invalid_url', 'cannot open ' + url + ': ' + (e && e.message)));
        this._scheduleReconnect();
        return;
      }
      this._ws = ws;
      var self = this;
      ws.onopen = function () {
        if (self._ws !== ws) return;
        self.state = 'open';
        self._emit('open');
      };
      ws.onmessage = function (event) {
        if (self._ws !== ws) return;
        self._onMessage(event.data);
      };
      ws.onerror = function () {
        /* a close event always follows */
      };
      ws.onclose = function (event) {
        if (self._ws !== ws) return;
        self._onClose(event ? event.code : 1006, event ? event.reason || '' : '');
      };
    }

    async _connectURL() {
      var params = [];
      var token = typeof this.token === 'function' ? await this.token() : this.token;
      if (token) params.push('token=' + encodeURIComponent(token));
      if (this.userParam) params.push('user=' + encodeURIComponent(this.userParam));
      if (!params.length) return this.url;
      return this.url + (this.url.indexOf('?') >= 0 ? '&' : '?') + params.join('&');
    }

    _onMessage(text) {
      var frame;
      try {
        frame = JSON.parse(text);
      } catch (e) {
        return; // the gateway only sends JSON text frames
      }
      if (!frame || typeof frame !== 'object') return;
      this._emit('frame', frame);
      switch (frame.type) {
        case 'welcome':
          this._onWelcome(frame);
          break;
        case 'ack':
        case 'pong':
        case 'presence':
          this._settle(frame.id, true, frame);
          break;
        case 'joined':
        case 'left':
          this._emit(frame.type, { room: frame.room, user: frame.user });
          break;
        case 'error': {
          var error = new SwitchboardError(frame.code || 'internal', frame.message, frame);
          if (frame.id === undefined || !this._settle(frame.id, false, error)) this._emit('error', error);
          break;
        }
        case 'direct':
          this._onStreamFrame(this._user, frame);
          break;
        case 'room':
          this._onStreamFrame(this._roomStream(frame.room), frame);
          break;
        case 'broadcast':
          // From a backend, to everyone (POST /v1/publish).
          this._emit('broadcast', { from: frame.from, data: frame.data });
          break;
        default:
          break;
      }
    }

    _onWelcome(frame) {
      var self = this;
      var reconnected = this._everWelcomed;
      this._everWelcomed = true;
      this._attempt = 0;
      this.state = 'ready';
      this.user = frame.user;
      this.gateway = frame.gateway;
      var top = asPosition(frame.position);
      if (!top) {
        // No history on this gateway: its frames carry no offsets, so positions held from
        // before would be stale by the next resume. Forget them; nothing is recovered.
        this._user.position = null;
        this._roomStreams.clear();
      } else if (this._user.position) {
        this._resume(top);
      } else {
        this._user.position = top;
      }
      // Re-join before anything else is sent: the gateway handles one connection's
      // frames in order, so a publish sent from a 'welcome' listener follows the joins.
      var rooms = this.rooms;
      var joins = rooms.map(function (room) {
        return self._rejoin(room);
      });
      var info = { user: frame.user, gateway: frame.gateway };
      var waiters = this._readyWaiters;
      this._readyWaiters = [];
      waiters.forEach(function (w) {
        w.resolve(info);
      });
      this._emit('welcome', info);
      if (rooms.length || reconnected) {
        Promise.all(joins).then(function (results) {
          self._emit('rejoined', {
            rooms: results.filter(function (r) { return r.ok; }).map(function (r) { return r.room; }),
            failed: results.filter(function (r) { return !r.ok; }).map(function (r) { return { room: r.room, error: r.error }; }),
          });
        });
      }
    }

    // ----- stream recovery (docs/clients.md, "Recovery") -----

    _roomStream(room) {
      var stream = this._roomStreams.get(room);
      if (!stream) {
        stream = { position: null, held: null, room: room };
        this._roomStreams.set(room, stream);
      }
      return stream;
    }

    _forgetRoom(room) {
      this._rooms.delete(room);
      this._presenceRooms.delete(room);
      var stream = this._roomStreams.get(room);
      this._roomStreams.delete(room);
      if (stream && stream.held) this._release(stream, false); // frames already read still reach the app
    }

    /** A join's or resume's ack position becomes the stream's, unless frames already went further. */
    _adopt(stream, position) {
      stream.position = later(stream.position, asPosition(position));
    }

    _onStreamFrame(stream, frame) {
      // Without an offset (history off) there is nothing to order or deduplicate.
      if (typeof frame.offset !== 'number') this._deliver(stream, frame);
      else if (stream.held) stream.held.push(frame);
      else this._accept(stream, frame);
    }

    /** Hands a frame to the app unless its stream already went past it; true if handed. */
    _accept(stream, frame) {
      var p = stream.position;
      // Same epoch and not newer: a copy of one the app already has (seen before a reconnect,
      // then replayed). Another epoch means the stream was re-created: take it and its epoch.
      if (p && p.epoch === frame.epoch && frame.offset <= p.offset) return false;
      stream.position = { epoch: frame.epoch, offset: frame.offset };
      this._deliver(stream, frame);
      return true;
    }

    _deliver(stream, frame) {
      var message = stream === this._user
        ? { from: frame.from, to: frame.to, data: frame.data }
        : { room: frame.room, from: frame.from, data: frame.data };
      if (typeof frame.offset === 'number') {
        message.offset = frame.offset;
        message.epoch = frame.epoch;
      }
      this._emit(stream === this._user ? 'direct' : 'room', message);
    }

    /**
     * Ends a hold: the held frames in offset order, each once. Returns how many were handed on.
     * `gapless`: only those that follow the position without a gap, for a hold that ends
     * without an answer while the position is kept for the next attempt (a drop mid-replay):
     * handing on a later live frame would move the position past messages never received.
     * The frames left out come again in the next replay.
     */
    _release(stream, gapless) {
      var held = stream.held || [];
      stream.held = null;
      // A stable sort: a live frame written before the replay lands in its place.
      held.sort(function (a, b) {
        return a.offset - b.offset;
      });
      var delivered = 0;
      for (var i = 0; i < held.length; i++) {
        var p = stream.position;
        if (gapless && !(p && held[i].epoch === p.epoch && held[i].offset <= p.offset + 1)) break;
        if (this._accept(stream, held[i])) delivered++;
      }
      return delivered;
    }

    /**
     * The answer to a resume or a join with since. `ack.recovered === false` means the
     * position held was useless (another epoch, expired, ahead): the app reloads the stream
     * up to `ack.position`, so only held frames after it are handed on (as the Swift client
     * does), and the stream continues from there.
     */
    _finishRecovery(stream, ack, reason) {
      var recovered = ack.recovered === true;
      if (!recovered) stream.position = ack.position && typeof ack.position.epoch === 'string' ? copyPosition(ack.position) : null;
      var delivered = this._release(stream, false);
      this._adopt(stream, ack.position);
      this._emitRecovered(stream, recovered, recovered ? undefined : reason || ack.reason, delivered);
    }

    _emitRecovered(stream, recovered, reason, delivered) {
      var event = stream === this._user ? { stream: 'user' } : { stream: 'room', room: stream.room };
      event.recovered = recovered;
      if (reason !== undefined) event.reason = reason;
      event.position = stream.position ? copyPosition(stream.position) : null;
      event.delivered = delivered;
      this._emit('recovered', event);
    }

    /** After a welcome with history: resumes the user stream from the position held. */
    _resume(top) {
      var self = this;
      var stream = this._user;
      stream.held = [];
      this._request({ type: 'resume', since: copyPosition(stream.position) }, function (ok, value) {
        if (ok) return self._finishRecovery(stream, value);
        // The socket went away: the next connection resumes from the same position.
        if (value.code === 'connection_closed' || value.code === 'not_connected') return self._release(stream, true);
        // Refused (history_unavailable, already_resumed, …) or unanswered: not retried on
        // this connection. The stream goes on from the top the welcome reported, so the next
        // resume does not replay what the app is now told to reload.
        var delivered = self._release(stream, false);
        value.stream = 'user';
        self._emit('error', value);
        self._adopt(stream, top);
        self._emitRecovered(stream, false, value.code, delivered);
      }).catch(function () {});
    }

    /** Joins a remembered room again after a welcome; with `since` when it has a position. */
    _rejoin(room) {
      var self = this;
      var stream = this._roomStream(room);
      var presence = this._presenceRooms.has(room);
      var failed = function (error) {
        // A permanent refusal forgets the room; a transient one keeps it (and its position) for the next reconnect.
        if (error.code === 'forbidden' || error.code === 'invalid_id') self._forgetRoom(room);
        error.room = room;
        self._emit('error', error);
        return { room: room, ok: false, error: error };
      };
      var joined = function () {
        return { room: room, ok: true };
      };
      if (!stream.position) {
        return this._request(this._joinFrame(room, presence)).then(function (ack) {
          self._adopt(stream, ack.position);
          return joined();
        }, failed);
      }
      stream.held = [];
      return new Promise(function (resolve) {
        var resume = self._joinFrame(room, presence);
        resume.since = copyPosition(stream.position);
        self._request(resume, function (ok, value) {
          if (ok) {
            self._finishRecovery(stream, value);
            return resolve(joined());
          }
          if (!RECOVERY_REFUSALS[value.code]) {
            self._release(stream, true); // the room keeps its position for the next reconnect
            return resolve(failed(value));
          }
          // Only the recovery was refused: join without since, once, so the room stays live,
          // and report it as not recovered. Sent from here so it precedes any later request.
          value.room = room;
          self._emit('error', value);
          self._request(self._joinFrame(room, presence), function (ok2, value2) {
            if (ok2) {
              self._finishRecovery(stream, { recovered: false, position: value2.position }, value.code);
              resolve(joined());
            } else {
              self._release(stream, true);
              resolve(failed(value2));
            }
          }).catch(function () {});
        }).catch(function () {});
      });
    }

    _onClose(code, reason) {
      var ws = this._ws;
      this._ws = null;
      if (ws) detach(ws);
      this._failPending('connection_closed', 'the connection closed (' + code + ')');
      var tokenRefreshable = typeof this.token === 'function';
      var willReconnect = this._wanted && this.reconnect && (code !== CLOSE_POLICY || tokenRefreshable);
      var stopping = this._wanted && !willReconnect;
      if (stopping) {
        this._wanted = false;
        this.state = code === CLOSE_POLICY ? 'stopped' : 'idle';
      } else if (willReconnect) {
        this.state = 'reconnecting';
      }
      this._emit('close', { code: code, reason: reason, willReconnect: willReconnect });
      if (stopping) {
        this._rejectReady('connection_closed', 'the gateway closed the connection (' + code + (reason ? ' ' + reason : '') + ')');
      } else if (this._wanted) {
        this._scheduleReconnect(); // unless close() was called from a 'close' listener
      }
    }

    _scheduleReconnect() {
      if (!this._wanted) return;
      var delay = backoffDelay(this._attempt, this.minDelayMs, this.maxDelayMs, this.random);
      this._attempt++;
      this.state = 'reconnecting';
      var self = this;
      var generation = this._generation;
      this._timer = setTimeout(function () {
        if (generation === self._generation && self._wanted) self._open();
      }, delay);
      this._emit('reconnecting', { attempt: this._attempt, delayMs: delay });
    }
  }

  /** @typedef {{epoch: string, offset: number}} Position */

  function finish(entry, ok, value) {
    if (entry.hook) entry.hook(ok, value);
    if (ok) entry.resolve(value);
    else entry.reject(value);
  }

  /** A well-formed {epoch, offset} copied, or null. */
  function asPosition(value) {
    if (!value || typeof value !== 'object' || typeof value.epoch !== 'string' || typeof value.offset !== 'number') return null;
    return { epoch: value.epoch, offset: value.offset };
  }

  function copyPosition(p) {
    return { epoch: p.epoch, offset: p.offset };
  }

  /** The further of two positions: in one epoch the higher offset; across epochs `b`, the newer news. */
  function later(a, b) {
    if (!a) return b;
    if (!b) return a;
    if (a.epoch !== b.epoch) return b;
    return b.offset > a.offset ? b : a;
  }

  function detach(ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  }

  function defaultURL() {
    if (typeof location === 'undefined' || !location.host) {
      throw new Error('Switchboard: options.url is required outside a web page');
    }
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }

  return { Client: Client, SwitchboardError: SwitchboardError, backoffDelay: backoffDelay, version: 1 };
});
