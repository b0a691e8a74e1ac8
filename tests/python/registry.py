"""A small Confluent-compatible schema registry for kgate's tests.

Serves what producers' serializers and kgate call: register a schema under a
subject, look a schema up by id. Prints "listening <port>" once ready and
counts lookups by id at GET /_stats, so a test can check kgate's cache.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
schemas = {}  # id -> schema text
subjects = {}  # subject -> [id, ...]
lookups = {}  # id -> count of GET /schemas/ids/<id>


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        parts = path.strip("/").split("/")
        with lock:
            if path == "/_stats":
                return self.reply(200, {"lookups": lookups})
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"] and parts[2].isdigit():
                sid = int(parts[2])
                lookups[sid] = lookups.get(sid, 0) + 1
                if sid in schemas:
                    return self.reply(200, {"schema": schemas[sid]})
                return self.reply(404, {"error_code": 40403, "message": "Schema not found"})
            if len(parts) == 4 and parts[0] == "subjects" and parts[2] == "versions":
                ids = subjects.get(parts[1], [])
                if not ids:
                    return self.reply(404, {"error_code": 40401, "message": "Subject not found"})
                version = len(ids) if parts[3] == "latest" else int(parts[3])
                sid = ids[version - 1]
                return self.reply(200, {"subject": parts[1], "version": version, "id": sid,
                                        "schema": schemas[sid]})
        self.reply(404, {"error_code": 404, "message": "not found"})

    def do_POST(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        schema = body.get("schema", "")
        with lock:
            sid = next((i for i, s in schemas.items() if s == schema), None)
            if sid is None:
                sid = len(schemas) + 1
                schemas[sid] = schema
            if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                ids = subjects.setdefault(parts[1], [])
                if sid not in ids:
                    ids.append(sid)
                return self.reply(200, {"id": sid})
            if len(parts) == 2 and parts[0] == "subjects":
                ids = subjects.get(parts[1], [])
                if sid in ids:
                    return self.reply(200, {"subject": parts[1], "id": sid,
                                            "version": ids.index(sid) + 1, "schema": schema})
                return self.reply(404, {"error_code": 40403, "message": "Schema not found"})
        self.reply(404, {"error_code": 404, "message": "not found"})


port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"listening {server.server_address[1]}", flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), daemon=True).start()
server.serve_forever()
