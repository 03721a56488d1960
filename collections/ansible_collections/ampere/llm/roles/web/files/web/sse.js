// sse.js: an incremental text/event-stream parser (the WHATWG rules) for streams read with fetch().
// EventSource cannot POST, so the page reads /generate's body itself and feeds the decoded text here,
// in whatever pieces the network delivers: lines and events may be split anywhere.

export class SSEParser {
  #buf = "";
  #event = "";
  #data = [];
  #first = true;
  comments = 0;  // comment lines (": keep-alive") seen: proof of life, never events

  // Feed one decoded chunk; returns the events it completed, as {event, data} objects.
  push(chunk) {
    if (this.#first && chunk.length) {
      this.#first = false;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1); // a leading BOM is not content
    }
    this.#buf += chunk;
    const events = [];
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    let m;
    while ((m = lineEnd.exec(this.#buf)) !== null) {
      // A lone "\r" at the very end may be the first half of "\r\n": wait for the next chunk.
      if (m[0] === "\r" && m.index === this.#buf.length - 1) break;
      this.#line(this.#buf.slice(start, m.index), events);
      start = lineEnd.lastIndex;
    }
    this.#buf = this.#buf.slice(start);
    return events;
  }

  #line(line, events) {
    if (line === "") {                        // a blank line dispatches the event being built
      if (this.#data.length) events.push({ event: this.#event || "message", data: this.#data.join("\n") });
      this.#event = "";
      this.#data = [];
      return;
    }
    if (line.startsWith(":")) { this.comments += 1; return; }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") this.#data.push(value);
    // "id" and "retry" only matter to EventSource's reconnects; a POST answer is never replayed.
  }
}
