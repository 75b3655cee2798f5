#!/usr/bin/env python3
"""A scripted model on loopback for real agent hosts (tests/hosts/run.sh).

Speaks the Anthropic Messages API (POST /v1/messages, SSE or JSON) and the OpenAI Responses API
(POST /v1/responses, SSE). Whatever the host, the "model" drives keyveil's main job with the
tools the host offers it:

  list_environments -> describe_environment(demo) -> run (pending_approval) -> run again while
  the human approves (completed, redacted) -> a final answer quoting the run's output.

Each step is chosen from the conversation the host sends (the tool results so far), so the
server holds no state. Every request body is appended to REQUESTS (one JSON line each) for the
test to search for the value afterwards. Usage: model.py PORT_FILE REQUESTS
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_FILE, REQUESTS = sys.argv[1], sys.argv[2]
LOCK = threading.Lock()
COMMAND = ["sh", "-c", "echo token: $API_TOKEN"]


def tool_named(names, suffix):
    """The host's name for keyveil's tool `suffix` (mcp__keyveil__run, keyveil_run, keyveil-run)."""
    for n in names:
        if "keyveil" in n and any(n.endswith(sep + suffix) for sep in ("__", "_", "-", ".", "/")):
            return n
    return None


def next_step(names, results):
    """(tool name, arguments) or (None, final text), from the tool results so far (strings)."""
    need = {s: tool_named(names, s) for s in ("list_environments", "describe_environment", "run")}
    if not all(need.values()):
        return None, "NO-KEYVEIL-TOOLS: the host offered " + ", ".join(sorted(names))
    n = len(results)
    if n == 0:
        return need["list_environments"], {}
    if n == 1:
        return need["describe_environment"], {"environment": "demo"}
    if n == 2:
        return need["run"], {"environment": "demo", "command": COMMAND, "wait_seconds": 0,
                             "reason": "host test"}
    last = results[-1]
    if "pending_approval" in last and n < 8:
        return need["run"], {"environment": "demo", "command": COMMAND, "wait_seconds": 40,
                             "reason": "host test"}
    return None, "FINAL-ANSWER: " + last


def text_of(content):
    if isinstance(content, str):
        return content
    out = []
    for c in content or []:
        if isinstance(c, dict):
            if c.get("type") == "text":
                out.append(c.get("text", ""))
            elif "content" in c:
                out.append(text_of(c["content"]))
            elif "output" in c:
                out.append(text_of(c["output"]))
    return "\n".join(out)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        with LOCK, open(REQUESTS, "ab") as f:
            f.write(json.dumps({"path": self.path, "body": raw.decode("utf-8", "replace")}).encode() + b"\n")
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def send(self, code, payload, ctype="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.body()
        if "models" in self.path:
            self.send(200, {"data": [{"id": "scripted", "object": "model", "type": "model",
                                      "display_name": "scripted"}], "object": "list",
                            "models": [], "has_more": False})
        else:
            self.send(200, {})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        req = self.body()
        if self.path.startswith("/v1/messages/count_tokens"):
            return self.send(200, {"input_tokens": 10})
        if self.path.startswith("/v1/messages"):
            return self.anthropic(req)
        if self.path.endswith("/responses"):
            return self.openai_responses(req)
        if ":streamGenerateContent" in self.path or ":generateContent" in self.path:
            return self.gemini(req, stream=":streamGenerateContent" in self.path)
        self.send(404, {"error": {"type": "not_found", "message": self.path}})

    # --- Anthropic Messages ---------------------------------------------------------------
    def anthropic(self, req):
        names = [t.get("name", "") for t in req.get("tools") or []]
        results = []
        for m in req.get("messages", []):
            if m.get("role") == "user" and isinstance(m.get("content"), list):
                for c in m["content"]:
                    if isinstance(c, dict) and c.get("type") == "tool_result":
                        results.append(text_of(c.get("content")))
        if not any("keyveil" in n for n in names):
            # Side requests (titles, summaries): a plain answer.
            tool, arg = None, "ok"
        else:
            tool, arg = next_step(names, results)
        if tool:
            block = {"type": "tool_use", "id": "toolu_%d" % len(results), "name": tool, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(arg)}
            stop = "tool_use"
            final = dict(block, input=arg)
        else:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": arg}
            stop = "end_turn"
            final = {"type": "text", "text": arg}
        msg = {"id": "msg_%d" % len(results), "type": "message", "role": "assistant",
               "model": req.get("model", "scripted"), "content": [], "stop_reason": None,
               "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
        if not req.get("stream"):
            return self.send(200, dict(msg, content=[final], stop_reason=stop))
        events = [
            ("message_start", {"type": "message_start", "message": msg}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 1}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        self.send(200, b"".join(b"event: %s\ndata: %s\n\n" % (e.encode(), json.dumps(d).encode())
                                for e, d in events), "text/event-stream")

    # --- Gemini generateContent -------------------------------------------------------------
    def gemini(self, req, stream):
        names = [f.get("name", "") for t in req.get("tools") or [] for f in t.get("functionDeclarations") or []]
        results = [json.dumps(p["functionResponse"].get("response"))
                   for c in req.get("contents") or [] for p in c.get("parts") or []
                   if isinstance(p, dict) and "functionResponse" in p]
        if not any("keyveil" in n for n in names):
            tool, arg = None, "ok"
        else:
            tool, arg = next_step(names, results)
        part = {"functionCall": {"name": tool, "args": arg}} if tool else {"text": arg}
        chunk = {"candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP",
                                 "index": 0}],
                 "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 1, "totalTokenCount": 11},
                 "modelVersion": "scripted"}
        if not stream:
            return self.send(200, chunk)
        self.send(200, b"data: %s\r\n\r\n" % json.dumps(chunk).encode(), "text/event-stream")

    # --- OpenAI Responses -------------------------------------------------------------------
    def openai_responses(self, req):
        names, space = [], {}
        for t in req.get("tools") or []:
            if t.get("type") == "namespace":
                # Codex groups an MCP server's tools: {"type": "namespace", "name": "mcp__keyveil",
                # "tools": [{"name": "run", ...}]}; a call names both.
                for sub in t.get("tools") or []:
                    full = t.get("name", "") + "__" + sub.get("name", "")
                    names.append(full)
                    space[full] = (t.get("name"), sub.get("name"))
            else:
                names.append(t.get("name") or (t.get("function") or {}).get("name") or "")
        results = [text_of(i.get("output")) for i in req.get("input") or []
                   if isinstance(i, dict) and i.get("type") in ("function_call_output", "custom_tool_call_output")]
        if not any("keyveil" in n for n in names):
            tool, arg = None, "ok"
        else:
            tool, arg = next_step(names, results)
        rid = "resp_%d" % len(results)
        if tool:
            item = {"type": "function_call", "id": "fc_%d" % len(results), "call_id": "call_%d" % len(results),
                    "name": tool, "arguments": json.dumps(arg), "status": "completed"}
            if tool in space:
                item["namespace"], item["name"] = space[tool]
        else:
            item = {"type": "message", "id": "msg_%d" % len(results), "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": arg, "annotations": []}]}
        resp = {"id": rid, "object": "response", "status": "completed", "model": req.get("model", "scripted"),
                "output": [item], "usage": {"input_tokens": 10, "output_tokens": 1, "total_tokens": 11,
                                            "input_tokens_details": {"cached_tokens": 0},
                                            "output_tokens_details": {"reasoning_tokens": 0}}}
        events = [
            ("response.created", {"type": "response.created", "response": dict(resp, status="in_progress", output=[])}),
            ("response.output_item.added", {"type": "response.output_item.added", "output_index": 0, "item": item}),
            ("response.output_item.done", {"type": "response.output_item.done", "output_index": 0, "item": item}),
            ("response.completed", {"type": "response.completed", "response": resp}),
        ]
        self.send(200, b"".join(b"event: %s\ndata: %s\n\n" % (e.encode(), json.dumps(d).encode())
                                for e, d in events), "text/event-stream")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os  # noqa: E402
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
