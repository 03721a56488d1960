"""POST /generate and read the event stream as it arrives: print the tokens live, or (--json) a summary.

The summary counts how many separate network reads carried token events: a stream that a proxy
buffered arrives in one lump, a real stream in many (molecule's verify asserts on it; `make demo`
prints the answer live). Usage: stream_generate.py URL [PROMPT] [--json]
"""
import http.client
import json
import sys
from urllib.parse import urlsplit

from sse import iter_reads

args = [a for a in sys.argv[1:] if a != "--json"]
as_json = "--json" in sys.argv
url = urlsplit(args[0])
prompt = args[1] if len(args) > 1 else "Name three colours of the rainbow."
body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0})
conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=120)
conn.request("POST", url.path, body, {"Content-Type": "application/json", "Accept": "text/event-stream"})
resp = conn.getresponse()
result = {"status": resp.status, "content_type": resp.getheader("Content-Type"),
          "served_by": resp.getheader("X-Served-By"), "tokens": [], "reads_with_tokens": 0,
          "done": None, "error": None}
if resp.status != 200:
    result["error"] = resp.read().decode(errors="replace")
for events in iter_reads(resp) if resp.status == 200 else ():
    tokens = [e.json()["token"] for e in events if e.name == "message" and "token" in e.json()]
    result["tokens"] += tokens
    result["reads_with_tokens"] += bool(tokens)
    if not as_json:
        print("".join(tokens), end="", flush=True)
    for e in events:
        if e.name in ("done", "error"):
            result[e.name] = e.json()
result["text"] = "".join(result["tokens"])
if as_json:
    print(json.dumps(result))
else:
    print(f"\n[{result['done'] or result['error']}] served by {result['served_by']}")
sys.exit(0 if result["status"] == 200 and result["done"] else 1)
