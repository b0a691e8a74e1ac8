/*
 * kgate client for browsers and Node.js: WebSocket first, Server-Sent Events and
 * long-polling as fallbacks; automatic reconnect with resume and duplicate drop.
 * No build step: the gateway serves this file at /sdk/kgate.js for a script tag
 * (window.KGate), and the npm package @kgate/client ships it as is (CommonJS, with
 * index.mjs for `import` and kgate.d.ts for TypeScript):
 *   <script src="/sdk/kgate.js"></script>
 *   const client = new KGate.Client({ url: location.origin, channels: ["prices:AAPL"] });
 *   client.on("data", (event) => ...);
 *   client.connect();
 * See clients/js/README.md for every option and event.
 */
(function (root) {
  "use strict";

  var DEFAULTS = {
    url: "",                      // gateway base URL (http(s)://host:port); default: the page's origin
    channels: [],                 // channel names: "topic" or "topic:key"
    from: "latest",               // where channels without a position start: "latest" or "earliest"
    snapshot: [],                 // channels (or true: all) that start with the latest value per key
                                  // (WebSocket, fresh start from "latest", topics with snapshot = true)
    delta: false,                 // channels (or true: all) whose records may come as deltas from the
                                  // key's previous record; "data" events always carry the full value
    maxRate: null,                // updates per second per key: a number (all channels) or
                                  // { channel: rate } (WebSocket; SSE and long-poll use the topic's)
    filter: null,                 // { channel: { headers: { name: value | [values] } } } (WebSocket)
    token: null,                  // a JWT, or a function returning one (called on every connect)
    session: null,                // a durable session id (WebSocket only): positions kept by the gateway too
    transports: ["websocket", "sse", "poll"], // tried in this order
    ack: true,                    // acknowledge delivered events (with a session)
    ackIntervalMs: 1000,          // acks are cumulative: one per partition this often, at most
    backoff: { initialMs: 500, maxMs: 30000, resetAfterMs: 60000, maxAttempts: Infinity },
    heartbeat: { intervalMs: 15000, timeoutMs: 45000 },
    connectTimeoutMs: 8000,       // a transport that has not opened by then counts as failed
    pollWaitMs: 20000,
    WebSocket: null,              // a WebSocket class; default: the global one, else the `ws` package (Node.js)
  };

  /** base + extra; an option name base lacks is a typo, so it is warned about, not used. */
  function merge(base, extra, path) {
    var out = {};
    Object.keys(base).forEach(function (k) { out[k] = base[k]; });
    Object.keys(extra || {}).forEach(function (k) {
      var name = path ? path + "." + k : k;
      if (!Object.prototype.hasOwnProperty.call(base, k)) {
        if (root.console) console.warn("kgate: unknown option " + JSON.stringify(name) + " ignored; options: " + Object.keys(base).join(", "));
        return;
      }
      out[k] = (base[k] && typeof base[k] === "object" && !Array.isArray(base[k]))
        ? merge(base[k], extra[k], name) : extra[k];
    });
    return out;
  }

  // ---- resume cursor (the same format as the gateway's src/codec/cursor.rs) ----
  function putVarint(bytes, value) {
    while (value >= 128) { bytes.push((value % 128) + 128); value = Math.floor(value / 128); }
    bytes.push(value);
  }
  function base64url(bytes) {
    var s = ""; for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  /** positions: [{channel: index, partition, next}] -> "p1.<base64url>" */
  function encodeCursor(positions) {
    var sorted = positions.slice().sort(function (a, b) {
      return a.channel - b.channel || a.partition - b.partition;
    });
    var bytes = [], last = null;
    sorted.forEach(function (p) {
      var base = (last && last.channel === p.channel) ? last.partition : 0;
      putVarint(bytes, p.channel); putVarint(bytes, p.partition - base); putVarint(bytes, p.next);
      last = p;
    });
    return "p1." + base64url(bytes);
  }

  // ---- the client ----
  function Client(options) {
    this.options = merge(DEFAULTS, options);
    if (!this.options.url) {
      if (!root.location) throw new Error("kgate: the `url` option is required outside a browser");
      this.options.url = root.location.origin;
    }
    this.listeners = {};
    this.positions = {};        // channel -> { partition: next offset }
    this.state = "idle";
    this.transport = null;      // "websocket" | "sse" | "poll" while connected
    this.reconnects = 0;
    this.replayedSinceReconnect = 0;
    this.attempt = 0;
    this.stopped = true;
    this._conn = null;
    this._timers = [];
    this._awaitingLive = {};
    this._snapshotLive = {};    // channel -> live offsets while its snapshot arrives
    this._publishes = {};       // request id -> { resolve, reject } until Kafka acknowledged
    this._publishSeq = 0;
  }

  Client.prototype.on = function (type, fn) {
    (this.listeners[type] = this.listeners[type] || []).push(fn); return this;
  };
  Client.prototype._emit = function (type, payload) {
    (this.listeners[type] || []).forEach(function (fn) {
      try { fn(payload); } catch (e) { if (root.console) console.error(e); }
    });
  };
  Client.prototype._setState = function (state, detail) {
    this.state = state;
    this._emit("state", { state: state, transport: this.transport, reconnects: this.reconnects, detail: detail || null });
  };

  /** Starts connecting (and reconnecting until close()). */
  Client.prototype.connect = function () {
    this.stopped = false;
    this._open(0);
    return this;
  };

  /** Closes for good. */
  Client.prototype.close = function () {
    this.stopped = true;
    this._clearTimers();
    if (this._conn) this._conn.close();
    this._conn = null;
    this._failPublishes("closed by the client");
    this.transport = null;
    this._setState("closed");
  };

  /** Drops the current connection as if the network failed (the client reconnects and resumes). */
  Client.prototype.dropConnection = function () {
    if (this._conn) this._conn.fail("dropped on request");
  };

  Client.prototype._clearTimers = function () {
    this._timers.forEach(function (t) { clearTimeout(t); clearInterval(t); });
    this._timers = [];
  };

  Client.prototype._token = function () {
    var t = this.options.token;
    return typeof t === "function" ? t() : t;
  };

  /** Where channel `name` starts: its held positions, else the configured `from`. */
  Client.prototype._from = function (name) {
    var held = this.positions[name];
    if (held && Object.keys(held).length) return { offsets: held, others: "earliest" };
    return this.options.from;
  };

  Client.prototype._cursor = function () {
    var self = this, positions = [];
    this.options.channels.forEach(function (name, index) {
      var held = self.positions[name] || {};
      Object.keys(held).forEach(function (p) {
        positions.push({ channel: index, partition: Number(p), next: held[p] });
      });
    });
    return positions.length ? encodeCursor(positions) : null;
  };

  /** Handles one protocol frame from any transport. */
  Client.prototype._frame = function (frame) {
    switch (frame.type) {
      case "event": {
        var name = this._channelOf(frame);
        var held = this.positions[name] = this.positions[name] || {};
        var next = held[frame.partition];
        if (next !== undefined && frame.offset < next) return; // duplicate: already delivered
        held[frame.partition] = frame.offset + 1;
        if (this._awaitingLive[name]) this.replayedSinceReconnect++;
        this._emit("data", frame);
        if (this.options.ack && this.options.session) this._queueAck(frame);
        break;
      }
      case "subscribed": {
        // A latest start is at the live offsets: hold them, so a resume skips nothing.
        var holdFor = this.positions[frame.channel] = this.positions[frame.channel] || {};
        if (this._snapshotLive[frame.channel] === null) {
          // The snapshot's events (below these offsets) come first; hold them after `snapshot_end`.
          this._snapshotLive[frame.channel] = frame.live_offsets || {};
        } else if (!this._heldBefore(frame.channel) && this.options.from === "latest") {
          Object.keys(frame.live_offsets || {}).forEach(function (p) {
            if (holdFor[p] === undefined) holdFor[p] = frame.live_offsets[p];
          });
        }
        break;
      }
      case "snapshot_end": {
        var live = this._snapshotLive[frame.channel] || {};
        var holdAt = this.positions[frame.channel] = this.positions[frame.channel] || {};
        Object.keys(live).forEach(function (p) { holdAt[p] = Math.max(holdAt[p] || 0, live[p]); });
        delete this._snapshotLive[frame.channel];
        this._emit("snapshot", frame);
        break;
      }
      case "live": delete this._awaitingLive[frame.channel]; this._emit("live", frame); break;
      case "gap": this._emit("gap", frame); break;
      case "published": {
        var done = this._publishes[frame.id];
        delete this._publishes[frame.id];
        if (done) done.resolve({ topic: frame.topic, partition: frame.partition, offset: frame.offset });
        break;
      }
      case "error": {
        // With a session, `attach` resumes the stored subscriptions before the client's own
        // subscribe of the same channel arrives: that one is refused, and nothing is lost.
        if (frame.code === "already_subscribed" && this.options.session && this.options.channels.indexOf(frame.id) >= 0) break;
        var failed = frame.id !== undefined && this._publishes[frame.id];
        if (!failed) { this._emit("error", frame); break; }
        delete this._publishes[frame.id];
        failed.reject(publishError(frame.code, frame.message));
        break;
      }
      case "close": break;
      default: this._emit("frame", frame);
    }
  };

  /**
   * Acks are cumulative and count against the gateway's command rate: hold the newest
   * offset per partition and send one ack each per `ackIntervalMs`.
   */
  Client.prototype._queueAck = function (frame) {
    var pending = this._pendingAcks = this._pendingAcks || {};
    var key = JSON.stringify([frame.topic, frame.partition]);
    if (!pending[key] || pending[key].offset < frame.offset) pending[key] = frame;
    if (this._ackTimer) return;
    var self = this;
    this._ackTimer = setTimeout(function () {
      self._ackTimer = null;
      var acks = self._pendingAcks;
      self._pendingAcks = {};
      Object.keys(acks).forEach(function (k) { if (self._conn && self._conn.ack) self._conn.ack(acks[k]); });
    }, this.options.ackIntervalMs);
  };

  Client.prototype._heldBefore = function (name) {
    return this._resumedChannels && this._resumedChannels[name];
  };

  /** The subscribed channel an event belongs to (by topic and key). */
  Client.prototype._channelOf = function (frame) {
    var chans = this.options.channels, best = null;
    for (var i = 0; i < chans.length; i++) {
      var c = chans[i], colon = c.indexOf(":");
      var topic = colon < 0 ? c : c.slice(0, colon), key = colon < 0 ? null : c.slice(colon + 1);
      if (topic !== frame.topic) continue;
      if (key !== null && key === frame.key) return c;
      if (key === null) best = c;
    }
    return best || frame.topic;
  };

  Client.prototype._open = function (index) {
    if (this.stopped) return;
    var self = this, kinds = this.options.transports;
    var kind = kinds[index % kinds.length];
    this._resumedChannels = {};
    this.options.channels.forEach(function (c) {
      if (self.positions[c] && Object.keys(self.positions[c]).length) self._resumedChannels[c] = true;
    });
    // After a reconnect, a channel's events before its `live` marker are the replay.
    this._awaitingLive = {};
    if (this.reconnects > 0) this.options.channels.forEach(function (c) { self._awaitingLive[c] = true; });
    this.replayedSinceReconnect = 0;
    this._setState("connecting", kind);
    var opened = false;
    var conn = TRANSPORTS[kind](this, {
      open: function () {
        opened = true;
        self.transport = kind;
        self._connectedAt = Date.now();
        self._setState("connected");
      },
      frame: function (f) { self._frame(f); },
      closed: function (reason, fatal) {
        if (self._conn !== conn) return;
        self._conn = null;
        self._failPublishes(reason);
        self._clearTimers();
        self.transport = null;
        if (self.stopped) return;
        if (fatal) { self._setState("failed", reason); self.stopped = true; return; }
        // A transport that never opened: try the next one at once (fallback).
        if (!opened && index + 1 < kinds.length * 2 && (index + 1) % kinds.length !== 0) {
          return self._open(index + 1);
        }
        self._retry(opened ? 0 : index + 1, reason);
      },
    });
    this._conn = conn;
    this._timers.push(setTimeout(function () {
      if (!opened && self._conn === conn) conn.fail("connect timeout");
    }, this.options.connectTimeoutMs));
  };

  function publishError(code, message) {
    var e = new Error(message || code);
    e.code = code;
    return e;
  }

  /**
   * Publishes a record to Kafka; resolves with {topic, partition, offset} once Kafka
   * acknowledged it, rejects with an Error whose `code` is the gateway's error code.
   * Over a WebSocket it is a `publish` command on the open connection; otherwise (SSE,
   * long-poll, or not connected) a POST to /v1/publish. `data` is sent as JSON; options:
   * `key` (string), `headers` ({name: string}).
   */
  Client.prototype.publish = function (topic, data, options) {
    var o = options || {}, self = this;
    if (this._conn && this._conn.publish) {
      var id = "publish-" + (++this._publishSeq);
      var command = { type: "publish", id: id, topic: topic, data: data === undefined ? null : data };
      if (o.key !== undefined) command.key = String(o.key);
      if (o.headers) command.headers = o.headers;
      return new Promise(function (resolve, reject) {
        self._publishes[id] = { resolve: resolve, reject: reject };
        if (!self._conn.publish(command)) {
          delete self._publishes[id];
          reject(publishError("not_connected", "the WebSocket is not open"));
        }
      });
    }
    var url = this.options.url + "/v1/publish/" + encodeURIComponent(topic) +
      (o.key !== undefined ? "?key=" + encodeURIComponent(String(o.key)) : "");
    var headers = { "Content-Type": "application/json" }, token = this._token();
    if (token) headers.Authorization = "Bearer " + token;
    Object.keys(o.headers || {}).forEach(function (name) { headers["kgate-header-" + name] = o.headers[name]; });
    return fetch(url, { method: "POST", headers: headers, body: JSON.stringify(data === undefined ? null : data) })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw publishError(body.code, body.message);
          return { topic: body.topic, partition: body.partition, offset: body.offset };
        });
      });
  };

  /** Fails the publishes still waiting for an answer: the connection that carried them ended. */
  Client.prototype._failPublishes = function (reason) {
    var pending = this._publishes;
    this._publishes = {};
    Object.keys(pending).forEach(function (id) {
      pending[id].reject(publishError("connection_closed",
        "the connection closed (" + reason + ") before Kafka's answer; the record may or may not have been produced"));
    });
  };

  Client.prototype._retry = function (nextIndex, reason) {
    var b = this.options.backoff;
    // A connection that stayed up long enough resets the backoff.
    if (this._connectedAt && Date.now() - this._connectedAt >= b.resetAfterMs) this.attempt = 0;
    this._connectedAt = null;
    this.attempt++;
    if (this.attempt > b.maxAttempts) { this._setState("failed", "gave up after " + b.maxAttempts + " attempts"); this.stopped = true; return; }
    this.reconnects++;
    // Full jitter: a random delay up to the exponential cap.
    var cap = Math.min(b.maxMs, b.initialMs * Math.pow(2, this.attempt - 1));
    var delay = Math.floor(Math.random() * cap);
    this._setState("reconnecting", { reason: reason, delayMs: delay });
    var self = this;
    this._timers.push(setTimeout(function () { self._open(nextIndex % self.options.transports.length); }, delay));
  };

  function withParams(base, params) {
    var q = Object.keys(params).filter(function (k) { return params[k] !== null && params[k] !== undefined; })
      .map(function (k) {
        var v = params[k];
        return Array.isArray(v)
          ? v.map(function (x) { return encodeURIComponent(k) + "=" + encodeURIComponent(x); }).join("&")
          : encodeURIComponent(k) + "=" + encodeURIComponent(v);
      }).join("&");
    return base + (q ? (base.indexOf("?") < 0 ? "?" : "&") + q : "");
  }

  /**
   * Delta frames (docs/protocol.md, "Deltas"): `[topic_id, partition, base_offset, edit...]`
   * applied to the text of the last event frame of the same key on this connection. One
   * Deltas per connection: the gateway counts what it sent on that connection alone.
   */
  function Deltas() { this.topics = {}; this.names = {}; }

  /** The event frame text a delta frame (parsed) stands for. */
  Deltas.prototype.expand = function (d) {
    var held = this.topics[this.names[d[0]]], base = held && held.frames[d[1] + ":" + d[2]];
    if (base === undefined) throw new Error("no frame held for delta base " + d.slice(0, 3).join(":"));
    var out = "", at = 0;
    for (var i = 3; i < d.length;) {
      var copy = d[i++], remove = typeof d[i] === "number" ? d[i++] : null, insert = d[i++];
      if (typeof insert !== "string" || at + copy > base.length) throw new Error("malformed delta");
      out += base.slice(at, at + copy) + insert;
      at += copy + (remove === null ? insert.length : remove);
    }
    return out + base.slice(at);
  };

  /** Notes a frame (parsed, with its text): topic ids, and each key's last event. */
  Deltas.prototype.note = function (f, text) {
    if (f.type === "subscribed" && f.delta) {
      // The gateway counts what it sends of the topic from this frame on: hold from here.
      var topic = f.channel.split(":")[0];
      this.names[f.topic_id] = topic;
      if (!this.topics[topic]) this.topics[topic] = { byKey: {}, frames: {} };
      return;
    }
    var held = f.type === "event" && this.topics[f.topic];
    var key = f.key !== undefined ? "k" + f.key : f.key_b64 !== undefined ? "b" + f.key_b64 : null;
    if (!held || key === null) return;
    var at = f.partition + ":" + f.offset, old = held.byKey[key];
    if (old !== undefined) delete held.frames[old];
    held.byKey[key] = at;
    held.frames[at] = text;
  };

  /** A frame as received (text, or a parsed delta array) as the parsed full frame. */
  Deltas.prototype.frame = function (text) {
    if (typeof text !== "string") text = this.expand(text);
    else if (text.charCodeAt(0) === 91 /* [ */) text = this.expand(JSON.parse(text));
    var f = JSON.parse(text);
    this.note(f, text);
    return f;
  };

  /** The channels of `client` that ask for deltas. */
  function deltaChannels(o) {
    return o.channels.filter(function (c) { return o.delta === true || (Array.isArray(o.delta) && o.delta.indexOf(c) >= 0); });
  }

  /**
   * What EventSource does, over fetch, where there is none (Node.js): the stream's
   * `data` lines joined per message. Set onopen, onmessage and onerror on the result.
   */
  function fetchEventSource(url) {
    var controller = typeof AbortController !== "undefined" ? new AbortController() : null;
    var es = { closed: false, close: function () { es.closed = true; if (controller) controller.abort(); } };
    fetch(url, { headers: { Accept: "text/event-stream" }, signal: controller ? controller.signal : undefined })
      .then(function (r) {
        if (!r.ok || !r.body) throw new Error("SSE answered " + r.status);
        es.onopen();
        var reader = r.body.getReader(), decoder = new TextDecoder(), rest = "", data = [];
        function read() {
          return reader.read().then(function (chunk) {
            if (chunk.done) throw new Error("the SSE stream ended");
            var lines = (rest + decoder.decode(chunk.value, { stream: true })).split("\n");
            rest = lines.pop();
            lines.forEach(function (line) {
              line = line.replace(/\r$/, "");
              if (line === "" && data.length) { var text = data.join("\n"); data = []; es.onmessage({ data: text }); }
              else if (line.indexOf("data:") === 0) data.push(line.charAt(5) === " " ? line.slice(6) : line.slice(5));
            });
            return read();
          });
        }
        return read();
      })
      .catch(function (e) { if (!es.closed) es.onerror(e); });
    return es;
  }

  /** The WebSocket class: the option, the global one, else the `ws` package under Node.js. */
  function webSocketClass(o) {
    if (o.WebSocket) return o.WebSocket;
    if (typeof WebSocket !== "undefined") return WebSocket;
    // Not `require("ws")`: a bundler would pull `ws` into a browser bundle.
    var load = typeof module === "object" && module && typeof module.require === "function" ? module.require.bind(module) : null;
    if (load) { try { return load("ws"); } catch (e) { /* not installed */ } }
    throw new Error("no WebSocket: install the `ws` package or pass the `WebSocket` option");
  }

  var TRANSPORTS = {
    websocket: function (client, cb) {
      var o = client.options, token = client._token();
      var url = o.url.replace(/^http/, "ws") + "/v1/ws";
      var protocols = ["kgate.v1.json"];
      if (token) protocols.push("kgate.bearer." + token);
      var ws, failed = false, lastHeard = Date.now(), timers = [], deltas = new Deltas();
      try { ws = new (webSocketClass(o))(url, protocols); } catch (e) { setTimeout(function () { cb.closed(String(e)); }); return { close: function () {}, fail: function () {} }; }
      function fail(reason, fatal) {
        if (failed) return; failed = true;
        timers.forEach(clearInterval);
        try { ws.close(); } catch (e) { /* already closed */ }
        cb.closed(reason, fatal);
      }
      ws.onopen = function () {
        cb.open();
        if (o.session) ws.send(JSON.stringify({ type: "attach", id: "attach", session: o.session }));
        o.channels.forEach(function (c) {
          var from = client._from(c), command = { type: "subscribe", id: c, channel: c, from: from };
          // A snapshot only for a fresh board: a resume continues from held positions instead.
          var wanted = o.snapshot === true || (Array.isArray(o.snapshot) && o.snapshot.indexOf(c) >= 0);
          if (wanted && from === "latest") { command.snapshot = true; client._snapshotLive[c] = null; }
          if (deltaChannels(o).indexOf(c) >= 0) command.delta = true;
          var rate = typeof o.maxRate === "number" ? o.maxRate : o.maxRate && o.maxRate[c];
          if (rate) command.max_rate = rate;
          if (o.filter && o.filter[c]) command.filter = o.filter[c];
          ws.send(JSON.stringify(command));
        });
        // Browsers answer server pings without telling scripts, so probe at the protocol level.
        timers.push(setInterval(function () {
          if (Date.now() - lastHeard > o.heartbeat.timeoutMs) return fail("heartbeat timeout");
          ws.send(JSON.stringify({ type: "ping" }));
        }, o.heartbeat.intervalMs));
      };
      ws.onmessage = function (m) {
        lastHeard = Date.now();
        var f;
        try { f = deltas.frame(m.data); } catch (e) {
          // A delta whose base is not held cannot be applied: resume on a fresh connection.
          if (e instanceof SyntaxError) return;
          return fail(String(e));
        }
        cb.frame(f);
      };
      ws.onclose = function (e) {
        // 4001 (token expired) reconnects with a fresh token; 4010 means another tab took the session.
        fail("closed " + e.code + (e.reason ? " " + e.reason : ""), e.code === 4010);
      };
      ws.onerror = function () { /* onclose follows */ };
      return {
        close: function () { failed = true; timers.forEach(clearInterval); try { ws.close(1000); } catch (e) { /* ignore */ } },
        fail: function (reason) { fail(reason); },
        ack: function (f) {
          if (ws.readyState === 1) ws.send(JSON.stringify({ type: "ack", topic: f.topic, partition: f.partition, offset: f.offset }));
        },
        publish: function (command) {
          if (ws.readyState !== 1) return false;
          ws.send(JSON.stringify(command));
          return true;
        },
      };
    },

    sse: function (client, cb) {
      var o = client.options;
      var streams = typeof fetch === "function" && typeof TextDecoder === "function";
      if (typeof EventSource === "undefined" && !streams) { setTimeout(function () { cb.closed("no EventSource"); }); return { close: function () {}, fail: function () {} }; }
      // SSE and long-poll ask for deltas on all of their channels or none.
      var deltas = new Deltas(), delta = deltaChannels(o).length > 0;
      var url = withParams(o.url + "/v1/sse", {
        channel: o.channels, from: o.from, last_event_id: client._cursor(), access_token: client._token(),
        delta: delta ? "true" : null,
      });
      var es = typeof EventSource !== "undefined" ? new EventSource(url) : fetchEventSource(url), failed = false;
      function fail(reason) { if (failed) return; failed = true; es.close(); cb.closed(reason); }
      es.onopen = function () { cb.open(); };
      es.onmessage = function (m) {
        var f;
        try { f = deltas.frame(m.data); } catch (e) { return e instanceof SyntaxError ? undefined : fail(String(e)); }
        if (f.type === "close") return fail("closed " + f.code + " " + f.reason);
        cb.frame(f);
      };
      // EventSource would reconnect by itself with its own last id; the client resumes
      // from the positions it holds instead, on whichever transport works.
      es.onerror = function () { fail("SSE error"); };
      return { close: function () { failed = true; es.close(); }, fail: fail };
    },

    poll: function (client, cb) {
      var o = client.options, stopped = false, opened = false, controller = null;
      var deltas = new Deltas(), delta = deltaChannels(o).length > 0;
      function loop() {
        if (stopped) return;
        controller = typeof AbortController !== "undefined" ? new AbortController() : null;
        var url = withParams(o.url + "/v1/poll", {
          // The first poll answers at once: it opens the transport and fixes the start positions.
          channel: o.channels, from: o.from, cursor: client._cursor(), wait_ms: opened ? o.pollWaitMs : 0,
          delta: delta ? "true" : null,
        });
        var headers = {}, token = client._token();
        if (token) headers.Authorization = "Bearer " + token;
        fetch(url, { headers: headers, signal: controller ? controller.signal : undefined })
          .then(function (r) {
            // 503 `draining` (or any refusal): back off and reconnect, most likely to another node.
            if (!r.ok) throw new Error("poll answered " + r.status);
            return r.json();
          })
          .then(function (body) {
            if (stopped) return;
            if (!opened) { opened = true; cb.open(); }
            var closed = null;
            // With deltas, events come as their frame's text (a string) or as a delta (an array).
            (body.frames || []).forEach(function (f) {
              if (typeof f === "string" || Array.isArray(f)) f = deltas.frame(f);
              if (f.type === "close") closed = f; else cb.frame(f);
            });
            // 1001: the node is draining; reconnect (with backoff) so the balancer picks another.
            if (closed) { stopped = true; return cb.closed("closed " + closed.code + " " + closed.reason); }
            loop();
          })
          .catch(function (e) { if (!stopped) { stopped = true; cb.closed(String(e)); } });
      }
      loop();
      return {
        close: function () { stopped = true; if (controller) controller.abort(); },
        fail: function (reason) { if (stopped) return; stopped = true; if (controller) controller.abort(); cb.closed(reason); },
      };
    },
  };

  var api = { Client: Client, Deltas: Deltas, encodeCursor: encodeCursor, version: "1" };
  // CommonJS (Node.js, bundlers) gets the module; a script tag gets window.KGate.
  if (typeof module === "object" && module && module.exports) module.exports = api;
  else root.KGate = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
