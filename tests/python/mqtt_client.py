"""A third-party MQTT client (paho-mqtt) for kgate's MQTT tests, driven by tests/it/mqtt.rs.

Prints one JSON line per event on stdout, flushed at once:
  {"event": "connack", "rc": 0, "session_present": false}
  {"event": "suback", "codes": [1]}
  {"event": "message", "topic": "...", "payload": "...", "qos": 1, "retain": false, "dup": false}
  {"event": "puback", "mid": 1, "rc": 0}
  {"event": "disconnect", "rc": ...}
  {"event": "done", ...}

Commands:
  sub   subscribe to --topic and print messages until --count arrived or --seconds passed
  pub   publish --message (--n times, `{n}` replaced by the index) and wait for every PUBACK
  fleet --clients N persistent QoS 1 subscribers that reconnect on their own; each must
        receive every payload "0".."N-1" of --expect; prints one "done" line per client
"""

import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

lock = threading.RLock()


def emit(**fields):
    with lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def code(rc):
    """A reason code (paho 2 passes ReasonCode objects) as an int."""
    return rc.value if hasattr(rc, "value") else int(rc)


def make_client(args, client_id):
    version = MQTTProtocolVersion.MQTTv5 if args.v5 else MQTTProtocolVersion.MQTTv311
    kwargs = dict(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=version,
        transport="websockets" if args.ws else "tcp",
    )
    if not args.v5:
        kwargs["clean_session"] = not args.persistent
    client = mqtt.Client(**kwargs)
    if args.ws:
        client.ws_set_options(path=args.path)
    if args.password:
        client.username_pw_set("token", args.password)
    if args.will:
        topic, payload = args.will.split("=", 1)
        client.will_set(topic, payload, qos=1)
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    return client


def connect(args, client):
    if args.v5:
        props = Properties(PacketTypes.CONNECT)
        if args.persistent:
            props.SessionExpiryInterval = 3600
        client.connect(args.host, args.port, keepalive=args.keepalive,
                       clean_start=not args.persistent, properties=props)
    else:
        client.connect(args.host, args.port, keepalive=args.keepalive)


def sub(args):
    client = make_client(args, args.client_id)
    received = []
    finished = threading.Event()

    def on_connect(c, userdata, flags, rc, props):
        emit(event="connack", rc=code(rc), session_present=bool(flags.session_present))
        if code(rc) == 0 and not (args.resume_only and flags.session_present):
            c.subscribe(args.topic, qos=args.qos)

    def on_subscribe(c, userdata, mid, rcs, props):
        emit(event="suback", codes=[code(r) for r in rcs])

    def on_message(c, userdata, msg):
        received.append(msg.payload)
        emit(event="message", topic=msg.topic, payload=msg.payload.decode("utf-8", "replace"),
             qos=msg.qos, retain=bool(msg.retain), dup=bool(msg.dup))
        if args.count and len(received) >= args.count:
            finished.set()

    def on_disconnect(c, userdata, flags, rc, props):
        emit(event="disconnect", rc=code(rc))
        if args.exit_on_disconnect:
            finished.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    connect(args, client)
    client.loop_start()
    finished.wait(args.seconds)
    client.disconnect()
    client.loop_stop()
    emit(event="done", received=len(received))


def pub(args):
    client = make_client(args, args.client_id)
    acked = threading.Event()
    pending = set()
    connected = threading.Event()

    def on_connect(c, userdata, flags, rc, props):
        emit(event="connack", rc=code(rc), session_present=bool(flags.session_present))
        connected.set()

    def on_publish(c, userdata, mid, rc, props):
        emit(event="puback", mid=mid, rc=code(rc))
        with lock:
            pending.discard(mid)
            if not pending:
                acked.set()

    def on_disconnect(c, userdata, flags, rc, props):
        emit(event="disconnect", rc=code(rc))
        acked.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    connect(args, client)
    client.loop_start()
    connected.wait(10)
    for i in range(args.n):
        props = None
        if args.v5 and args.header:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [tuple(args.header.split("=", 1))]
        info = client.publish(args.topic, args.message.replace("{n}", str(i)), qos=args.qos,
                              properties=props)
        with lock:
            pending.add(info.mid)
    acked.wait(args.seconds)
    client.disconnect()
    client.loop_stop()
    emit(event="done", unacked=len(pending))


def fleet(args):
    expected = {str(i) for i in range(args.expect)}
    clients = []
    subscribed = set()
    seen = {}
    complete = threading.Event()

    for n in range(args.clients):
        cid = f"{args.client_id}-{n}"
        seen[cid] = set()
        client = make_client(args, cid)

        def on_connect(c, userdata, flags, rc, props, cid=cid):
            if code(rc) == 0 and not flags.session_present:
                c.subscribe(args.topic, qos=1)

        def on_subscribe(c, userdata, mid, rcs, props, cid=cid):
            with lock:
                subscribed.add(cid)
                if len(subscribed) == args.clients:
                    emit(event="ready")

        def on_message(c, userdata, msg, cid=cid):
            with lock:
                seen[cid].add(msg.payload.decode())
                if all(expected <= s for s in seen.values()):
                    complete.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        connect(args, client)
        client.loop_start()
        clients.append(client)
    complete.wait(args.seconds)
    for client in clients:
        client.disconnect()
        client.loop_stop()
    for cid, s in sorted(seen.items()):
        missing = sorted(expected - s, key=int)
        emit(event="done", client=cid, received=len(s), missing=missing[:20])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["sub", "pub", "fleet"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ws", action="store_true", help="MQTT over WebSocket")
    p.add_argument("--path", default="/mqtt")
    p.add_argument("--v5", action="store_true", help="MQTT 5 (default 3.1.1)")
    p.add_argument("--client-id", default="paho")
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--resume-only", action="store_true",
                   help="do not subscribe when the session was resumed")
    p.add_argument("--password")
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--topic", required=True)
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--exit-on-disconnect", action="store_true")
    p.add_argument("--message", default="")
    p.add_argument("--header", help="name=value, an MQTT 5 user property")
    p.add_argument("--will", help="topic=payload, the will (QoS 1)")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--expect", type=int, default=0)
    args = p.parse_args()
    {"sub": sub, "pub": pub, "fleet": fleet}[args.command](args)


if __name__ == "__main__":
    main()
