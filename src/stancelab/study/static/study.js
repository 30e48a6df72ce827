/* Progressive enhancement of the study pages: every form works without this file.
   With it: a live character count (limits are shown before sending, nothing is cut),
   and the chat sends in the background, shows a typing indicator with Send disabled,
   and receives the reply as a server-sent event. A draft typed while waiting survives
   the page refresh that follows the reply. */
(function () {
  "use strict";

  function counters() {
    var boxes = document.querySelectorAll("textarea[data-max]");
    Array.prototype.forEach.call(boxes, function (box) {
      var max = parseInt(box.getAttribute("data-max"), 10);
      var out = document.getElementById(box.id + "-count");
      function update() {
        var n = box.value.replace(/\r\n/g, "\n").trim().length;
        if (out) {
          out.textContent = n + " / " + max + " characters" + (n > max ? ": please shorten it" : "");
          out.classList.toggle("over", n > max);
        }
        var button = box.form && box.form.querySelector("button[type=submit]");
        if (button && !box.form.getAttribute("data-busy")) { button.disabled = n > max; }
      }
      box.addEventListener("input", update);
      update();
    });
  }

  function saveDraft() {
    var box = document.getElementById("message");
    if (box && box.value.trim()) {
      try { sessionStorage.setItem("stancelab-draft", box.value); } catch (e) { /* private mode */ }
    }
  }

  function restoreDraft() {
    var box = document.getElementById("message");
    var draft = null;
    try { draft = sessionStorage.getItem("stancelab-draft"); } catch (e) { return; }
    if (box && draft && !box.value) { box.value = draft; }
    if (box) { try { sessionStorage.removeItem("stancelab-draft"); } catch (e) { /* ignore */ } }
  }

  function refresh() {
    saveDraft();
    window.location.replace("/study");
  }

  function listen(url, node) {
    var source = new EventSource(url);
    source.addEventListener("reply", function (event) {
      var data = JSON.parse(event.data);
      source.close();
      var typing = node.querySelector(".typing");
      if (typing) { typing.remove(); }
      node.classList.remove("pending");
      node.querySelector(".text").textContent = data.text;
      node.setAttribute("data-role", "assistant");
      document.body.setAttribute("data-reply-shown", String(data.turn));
      window.setTimeout(refresh, 600);
    });
    ["failed", "timeout"].forEach(function (name) {
      source.addEventListener(name, function () { source.close(); refresh(); });
    });
  }

  function bubble(role, who, text) {
    var node = document.createElement("div");
    node.className = "msg " + role;
    var label = document.createElement("span");
    label.className = "who";
    label.textContent = who;
    node.appendChild(label);
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    node.appendChild(body);
    return node;
  }

  function showError(form, message) {
    saveDraft();  /* a reload keeps what was typed */
    var old = form.querySelector(".error.js");
    if (old) { old.remove(); }
    var p = document.createElement("p");
    p.className = "error js";
    p.setAttribute("role", "alert");
    p.textContent = message;
    form.insertBefore(p, form.firstChild);
  }

  function chat() {
    Array.prototype.forEach.call(document.querySelectorAll(".msg.pending[data-stream]"), function (node) {
      listen(node.getAttribute("data-stream"), node);
    });
    var form = document.getElementById("form-message");
    if (!form || !window.fetch || !window.EventSource) { return; }
    restoreDraft();
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (form.getAttribute("data-busy")) { return; }
      var button = form.querySelector("button[type=submit]");
      var box = document.getElementById("message");
      var text = box.value;
      form.setAttribute("data-busy", "1");
      button.disabled = true;
      button.textContent = "Waiting for the reply…";
      var body = new URLSearchParams(new FormData(form));
      fetch(form.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "X-Study-Async": "1" }
      }).then(function (response) {
        var type = response.headers.get("content-type") || "";
        if (type.indexOf("application/json") === 0) { return response.json(); }
        if (response.redirected) { return { navigate: response.url }; }
        /* an HTML answer (rate limit, expired form): keep the text, say so */
        return {
          error: response.status === 429
            ? "You are going a little fast. Please wait a few seconds and send again."
            : "Your message could not be sent. Please reload the page; your text is kept here."
        };
      }).then(function (data) {
        if (data.navigate) { window.location.replace(data.navigate); return; }
        if (data.error) {
          form.removeAttribute("data-busy");
          button.disabled = false;
          button.textContent = "Send";
          showError(form, data.error);
          return;
        }
        if (data.reload) { refresh(); return; }
        var transcript = document.getElementById("transcript");
        var empty = document.getElementById("empty-note");
        if (empty) { empty.remove(); }
        var mine = bubble("user", "You", text.trim());
        mine.setAttribute("data-role", "user");
        mine.setAttribute("data-pending", "1");
        transcript.appendChild(mine);
        var reply = bubble("assistant pending", "Chatbot", "");
        var typing = document.createElement("span");
        typing.className = "typing";
        typing.setAttribute("role", "status");
        typing.setAttribute("aria-label", "The chatbot is writing a reply");
        typing.innerHTML = "<i></i><i></i><i></i>";
        reply.insertBefore(typing, reply.lastChild);
        transcript.appendChild(reply);
        box.value = "";
        box.dispatchEvent(new Event("input"));
        button.disabled = true;
        listen(data.stream, reply);
      }).catch(function () {
        /* the network failed: post the plain form (the same idempotency key, so a
           message the server did receive is never stored twice) */
        form.removeAttribute("data-busy");
        form.submit();
      });
    });
  }

  /* The time a participant took to answer the per-turn stance: from the form appearing
     to the first choice on its scale (the server falls back to the submission time). */
  function stanceTimes() {
    var shown = Date.now();
    Array.prototype.forEach.call(document.querySelectorAll("input[name=stance_ms]"), function (field) {
      var form = field.form;
      Array.prototype.forEach.call(form.querySelectorAll("input[name=stance]"), function (radio) {
        radio.addEventListener("change", function () {
          if (!field.value) { field.value = String(Date.now() - shown); }
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    counters();
    stanceTimes();
    chat();
  });
})();
