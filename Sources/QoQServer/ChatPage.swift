// The chat page `qoq serve` answers at `/` (issue #16): one self-contained HTML file (no external assets, works
// offline) that talks to /v1/chat/completions with streaming, shows the model's name, stops an answer, takes a
// temperature and, when the server has an API key, the key (kept in the browser's localStorage, sent as a Bearer
// token). The page itself holds no secret, so it is served without the key; every API call it makes needs it.
import Foundation
import QoQIO

enum ChatPage {
  /// The page for `model` (JSON-encoded into the script, with "</" escaped so no value can close the script tag).
  static func html(model: String) -> String {
    let modelJS = JSON.serialize(.string(model)).replacingOccurrences(of: "</", with: "<\\/")
    return """
    <!doctype html>
    <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
    <title>qoq chat</title>
    <style>
    body{font:15px/1.45 system-ui,sans-serif;margin:0;display:flex;flex-direction:column;height:100vh;background:#f6f6f4}
    header{padding:8px 14px;background:#222;color:#eee;display:flex;gap:12px;align-items:center;flex-wrap:wrap}
    header b{font-weight:600} header input{width:5em} header .key{width:12em}
    #log{flex:1;overflow:auto;padding:14px}
    .msg{max-width:48em;margin:0 0 10px;padding:8px 12px;border-radius:8px;white-space:pre-wrap;word-wrap:break-word}
    .user{background:#dbe8ff;margin-left:auto}.assistant{background:#fff;border:1px solid #ddd}.error{background:#fdd}
    .stats{font-size:12px;color:#777;margin:-6px 0 10px}
    form{display:flex;gap:8px;padding:10px 14px;background:#eee}
    textarea{flex:1;height:3.2em;font:inherit;padding:6px}
    button{font:inherit;padding:0 16px}
    </style></head><body>
    <header><b>qoq</b><span id="model"></span>
    <label>temperature <input id="temp" type="number" min="0" max="2" step="0.1" value="0.7"></label>
    <label>API key <input id="key" class="key" type="password" placeholder="(if the server has one)"></label>
    <button id="reset" type="button">New chat</button></header>
    <div id="log"></div>
    <form id="form"><textarea id="input" placeholder="Message (Enter sends, Shift+Enter for a new line)"></textarea>
    <button id="send" type="submit">Send</button><button id="stop" type="button" disabled>Stop</button></form>
    <script>
    const MODEL = \(modelJS);
    const $ = (id) => document.getElementById(id);
    $("model").textContent = MODEL;
    $("key").value = localStorage.getItem("qoq-key") || "";
    $("key").onchange = () => localStorage.setItem("qoq-key", $("key").value);
    let messages = [], controller = null;
    function add(cls, text) {
      const d = document.createElement("div"); d.className = "msg " + cls; d.textContent = text;
      $("log").appendChild(d); $("log").scrollTop = $("log").scrollHeight; return d;
    }
    $("reset").onclick = () => { if (controller) controller.abort(); messages = []; $("log").textContent = ""; };
    $("stop").onclick = () => { if (controller) controller.abort(); };
    $("input").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("form").requestSubmit(); } };
    $("form").onsubmit = async (e) => {
      e.preventDefault();
      const text = $("input").value.trim();
      if (!text || controller) return;
      $("input").value = ""; add("user", text); messages.push({role: "user", content: text});
      const out = add("assistant", ""); let answer = "", tokens = 0;
      const started = performance.now(); let first = 0;
      controller = new AbortController(); $("send").disabled = true; $("stop").disabled = false;
      const headers = {"Content-Type": "application/json"};
      if ($("key").value) headers["Authorization"] = "Bearer " + $("key").value;
      try {
        const res = await fetch("/v1/chat/completions", {method: "POST", headers, signal: controller.signal,
          body: JSON.stringify({model: MODEL, messages, stream: true, temperature: parseFloat($("temp").value) || 0})});
        if (!res.ok) { const j = await res.json().catch(() => ({})); throw new Error((j.error && j.error.message) || res.statusText); }
        const reader = res.body.getReader(), dec = new TextDecoder(); let buf = "";
        for (;;) {
          const {value, done} = await reader.read(); if (done) break;
          buf += dec.decode(value, {stream: true});
          let i;
          while ((i = buf.indexOf("\\n\\n")) >= 0) {
            const block = buf.slice(0, i); buf = buf.slice(i + 2);
            if (!block.startsWith("data: ")) continue;
            const data = block.slice(6); if (data === "[DONE]") continue;
            const delta = ((JSON.parse(data).choices || [])[0] || {}).delta || {};
            if (delta.content) { if (!first) first = performance.now(); answer += delta.content; tokens++; out.textContent = answer; }
          }
          $("log").scrollTop = $("log").scrollHeight;
        }
      } catch (err) {
        if (err.name !== "AbortError") { out.className = "msg error"; out.textContent = answer + "\\n[" + err.message + "]"; }
      }
      messages.push({role: "assistant", content: answer});
      const secs = (performance.now() - (first || started)) / 1000;
      const s = document.createElement("div"); s.className = "stats";
      s.textContent = tokens + " tokens" + (first ? ", first after " + ((first - started) / 1000).toFixed(2) + " s, " +
        (tokens > 1 ? ((tokens - 1) / secs).toFixed(1) : "-") + " tok/s" : "");
      $("log").appendChild(s);
      controller = null; $("send").disabled = false; $("stop").disabled = true;
    };
    </script></body></html>
    """
  }
}
