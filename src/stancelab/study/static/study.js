/* Progressive enhancement of the study pages: every form works without this file.
   With it:
   - a live character count beside each text box (limits show before sending, nothing is cut);
   - drafts: what is typed in a text box is kept in sessionStorage under the key its
     data-draft names (participant, page, turn), so a reload loses nothing; a message
     draft is forgotten once the message is stored;
   - the chat sends in the background and updates in place (no page load): after each
     step it fetches its own page (/study) and swaps the transcript and the forms, so the
     next form's turn and idempotency key come from the server, never from this file;
   - the reply arrives over server-sent events (/study/stream/TURN): `partial` carries the
     whole text so far (the bubble grows), `reply` the final text, `failed`/`timeout` end
     the wait (the page then shows what the server says);
   - every tab of one participant shows the same conversation: tabs tell each other over a
     BroadcastChannel, and a visible tab asks /study/state every few seconds (another
     browser, a browser without the channel), refreshing in place when it changed. */
(function () {
  "use strict";

  var POLL_MS = 4000;
  var streams = {};      /* turn -> {source, node, text}: the reply streams this tab holds */
  var channel = null;
  var syncs = 0;         /* syncs asked for: an answer to an older one is out of date */
  var posting = false;   /* a message is on its way: a sync waits for its answer */
  var syncAfterPost = false;

  function each(root, selector, fn) {
    Array.prototype.forEach.call(root.querySelectorAll(selector), fn);
  }

  function storage(fn) {
    try { return fn(window.sessionStorage); } catch (e) { return null; }  /* private mode */
  }

  /* --- text boxes: counts and drafts ------------------------------------------------ */

  function updateCount(box) {
    var max = parseInt(box.getAttribute("data-max"), 10);
    var out = document.getElementById(box.id + "-count");
    var n = box.value.replace(/\r\n/g, "\n").trim().length;
    if (out) {
      out.textContent = n + " / " + max + " characters" + (n > max ? ": please shorten it" : "");
      out.classList.toggle("over", n > max);
    }
    var button = box.form && box.form.querySelector("button[type=submit]");
    if (button && !box.form.getAttribute("data-busy")) { button.disabled = n > max; }
  }

  function saveDraft(box) {
    var key = box.getAttribute("data-draft");
    if (!key) { return; }
    storage(function (s) {
      if (box.value.trim()) { s.setItem(key, box.value); } else { s.removeItem(key); }
    });
  }

  function textBoxes(root) {
    each(root, "textarea[data-max]", function (box) {
      var key = box.getAttribute("data-draft");
      var draft = key ? storage(function (s) { return s.getItem(key); }) : null;
      if (draft && !box.value) { box.value = draft; }  /* what the server sent back wins */
      box.addEventListener("input", function () { updateCount(box); saveDraft(box); });
      if (box.form && box.form.id !== "form-message") {
        /* a plain form: the server keeps what it refuses, so the draft has done its job */
        box.form.addEventListener("submit", function () {
          storage(function (s) { s.removeItem(key); });
        });
      }
      updateCount(box);
    });
  }

  /* Message drafts of turns before the page's next turn belong to stored messages. */
  function forgetOldDrafts() {
    var transcript = document.getElementById("transcript");
    var prefix = transcript && transcript.getAttribute("data-drafts");
    if (!prefix) { return; }
    var next = parseInt(transcript.getAttribute("data-next-turn"), 10);
    storage(function (s) {
      var old = [];
      for (var i = 0; i < s.length; i++) {
        var key = s.key(i);
        if (key && key.indexOf(prefix) === 0 && parseInt(key.slice(prefix.length), 10) < next) {
          old.push(key);
        }
      }
      old.forEach(function (key) { s.removeItem(key); });
    });
  }

  /* The time a participant took to answer a per-turn stance: from the form appearing to
     the first choice on its scale (the server falls back to the submission time). */
  function stanceTimes(root) {
    var shown = Date.now();
    each(root, "input[name=stance_ms]", function (field) {
      each(field.form, "input[name=stance]", function (radio) {
        radio.addEventListener("change", function () {
          if (!field.value) { field.value = String(Date.now() - shown); }
        });
      });
    });
  }

  /* --- the conversation, in place --------------------------------------------------- */

  /* Show a bubble whole when it fits the window, else from its first line. */
  function reveal(node) {
    if (!node || !node.scrollIntoView) { return; }
    var fits = node.getBoundingClientRect().height <= window.innerHeight;
    node.scrollIntoView({ block: fits ? "nearest" : "start" });
  }

  function setText(node, text) {
    var typing = node.querySelector(".typing");
    if (typing) { typing.remove(); }
    node.querySelector(".text").textContent = text;
  }

  function listen(node) {
    var turn = node.getAttribute("data-turn");
    var open = streams[turn];
    if (open) {  /* the page was swapped: the stream now writes into the new bubble */
      open.node = node;
      if (open.text) { setText(node, open.text); }
      return;
    }
    var source = new EventSource(node.getAttribute("data-stream"));
    var entry = { source: source, node: node, text: "" };
    streams[turn] = entry;
    function end() { source.close(); delete streams[turn]; }
    source.addEventListener("partial", function (event) {
      entry.text = JSON.parse(event.data).text;
      setText(entry.node, entry.text);
      reveal(entry.node);
    });
    source.addEventListener("reply", function (event) {
      var data = JSON.parse(event.data);
      end();
      entry.node.classList.remove("pending");
      entry.node.setAttribute("data-role", "assistant");
      setText(entry.node, data.text);
      reveal(entry.node);
      document.body.setAttribute("data-reply-shown", String(data.turn));
      tell();
      sync({ reveal: true });
    });
    ["failed", "timeout"].forEach(function (name) {
      source.addEventListener(name, function () { end(); tell(); sync({}); });
    });
  }

  function checkedIn(root, form, name) {
    return root.querySelector(form + " input[name=" + name + "]:checked");
  }

  /* What the participant is in the middle of survives a swap: the text being typed, the
     finish form's choice, an open "finish now"; the per-turn stance only while the form
     is still for the same turn (a new reply asks the question afresh). */
  function carry(from, to) {
    var box = from.querySelector("#message");
    var fresh = to.querySelector("#message");
    if (box && fresh && !fresh.value) { fresh.value = box.value; }
    var turn = from.querySelector("#form-message input[name=turn]");
    var freshTurn = to.querySelector("#form-message input[name=turn]");
    var forms = ["#form-finish"];
    if (turn && freshTurn && turn.value === freshTurn.value) { forms.push("#form-message"); }
    forms.forEach(function (form) {
      var picked = checkedIn(from, form, "stance");
      var twin = picked && to.querySelector(form + " input[name=stance][value='" + picked.value + "']");
      if (twin) { twin.checked = true; }
      var ms = from.querySelector(form + " input[name=stance_ms]");
      var freshMs = to.querySelector(form + " input[name=stance_ms]");
      if (ms && freshMs && twin) { freshMs.value = ms.value; }
    });
    var early = from.querySelector("#finish-early");
    var freshEarly = to.querySelector("#finish-early");
    if (early && freshEarly && early.open) { freshEarly.open = true; }
    each(to, "[autofocus]", function (node) { node.removeAttribute("autofocus"); });  /* no jump */
  }

  function patch(doc, options) {
    var transcript = document.getElementById("transcript");
    var forms = document.getElementById("chat-forms");
    var freshTranscript = document.adoptNode(doc.getElementById("transcript"));
    var freshForms = document.adoptNode(doc.getElementById("chat-forms"));
    carry(forms, freshForms);
    transcript.replaceWith(freshTranscript);
    forms.replaceWith(freshForms);
    textBoxes(freshForms);
    each(freshForms, "#message", saveDraft);  /* a carried draft now belongs to the new turn */
    stanceTimes(freshForms);
    forgetOldDrafts();
    messageForm();
    each(freshTranscript, ".msg.pending[data-stream]", listen);
    if (options.reveal) { showNewest(freshTranscript); }
  }

  /* After this tab's message or reply: the reply being written, else the newest reply;
     after the last message, Finish too when it fits beside the reply's start. */
  function showNewest(transcript) {
    var pending = transcript.querySelector(".msg.pending[data-stream]");
    var replies = transcript.querySelectorAll(".msg.assistant");
    var reply = pending || replies[replies.length - 1];
    reveal(reply);
    var finish = document.getElementById("form-finish");
    if (reply && !pending && finish && !document.getElementById("form-message")) {
      var top = reply.getBoundingClientRect().top;
      var bottom = finish.getBoundingClientRect().bottom;
      if (bottom - top <= window.innerHeight) { finish.scrollIntoView({ block: "end" }); }
    }
  }

  /* Fetch this participant's page and swap in its conversation. Another step (a second
     tab finished the conversation) is a real page change: go there. */
  function sync(options) {
    if (posting) { syncAfterPost = true; return; }
    var mine = ++syncs;
    fetch("/study", { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        return response.text().then(function (html) { return { ok: response.ok, html: html }; });
      })
      .then(function (answer) {
        if (mine !== syncs) { return; }  /* a newer sync is on its way */
        if (!answer.ok) { window.setTimeout(function () { sync(options); }, 3000); return; }
        var doc = new DOMParser().parseFromString(answer.html, "text/html");
        var main = doc.querySelector("main");
        if (!main || main.getAttribute("data-step") !== "conversation" || !doc.getElementById("chat-forms")) {
          window.location.replace("/study");
          return;
        }
        patch(doc, options);
      })
      .catch(function () { /* offline: the next poll or event tries again */ });
  }

  function tell() {
    if (channel) { channel.postMessage("changed"); }
  }

  function showError(form, message) {
    var old = form.querySelector(".error.js");
    if (old) { old.remove(); }
    var p = document.createElement("p");
    p.className = "error js";
    p.setAttribute("role", "alert");
    p.textContent = message;
    form.insertBefore(p, form.firstChild);
  }

  function busy(form, on) {
    var button = form.querySelector("button[type=submit]");
    if (on) {
      form.setAttribute("data-busy", "1");
      button.disabled = true;
      button.textContent = "Waiting for the reply…";
    } else {
      form.removeAttribute("data-busy");
      button.textContent = "Send";
      updateCount(document.getElementById("message"));
    }
  }

  function asJson(response) {
    var type = response.headers.get("content-type") || "";
    if (type.indexOf("application/json") === 0) { return response.json(); }
    if (response.redirected) { return { navigate: response.url }; }
    /* an HTML answer (rate limit, expired form): keep the text, say so */
    return {
      error: response.status === 429
        ? "You are going a little fast. Please wait a few seconds and send again."
        : "Your message could not be sent. Please reload the page; your text is kept here."
    };
  }

  function messageForm() {
    var form = document.getElementById("form-message");
    if (!form) { return; }
    form.hidden = false;
    if (form.getAttribute("data-pending")) { busy(form, true); }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (form.getAttribute("data-busy")) { return; }
      var sent = document.getElementById("message").value;
      var body = new URLSearchParams(new FormData(form));
      busy(form, true);
      posting = true;
      fetch(form.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { "X-Study-Async": "1" }
      }).then(asJson).then(function (data) {
        posting = false;
        if (data.navigate) { window.location.replace(data.navigate); return; }
        if (data.error) {  /* nothing stored: the text and the choices stay as they are */
          busy(form, false);
          showError(form, data.error);
          if (syncAfterPost) { syncAfterPost = false; sync({}); }
          return;
        }
        var box = document.getElementById("message");
        if (data.turn) {
          var key = box.getAttribute("data-draft");
          storage(function (s) { s.removeItem(key); });
          if (box.value === sent) { box.value = ""; }
          updateCount(box);
        }
        syncAfterPost = false;
        tell();
        sync({ reveal: true });
      }).catch(function () {
        /* the network failed: post the plain form (the same idempotency key, so a
           message the server did receive is never stored twice) */
        posting = false;
        form.removeAttribute("data-busy");
        form.submit();
      });
    });
  }

  function poll() {
    if (document.visibilityState === "hidden" || posting) { return; }
    fetch("/study/state", { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (state) {
        var transcript = document.getElementById("transcript");
        if (!state || !transcript) { return; }
        if (state.step !== "conversation") { window.location.replace("/study"); return; }
        if (state.version !== transcript.getAttribute("data-version")) { sync({}); }
      })
      .catch(function () { /* offline: try again at the next tick */ });
  }

  function chat() {
    var transcript = document.getElementById("transcript");
    if (!transcript || !document.getElementById("chat-forms")) { return; }
    if (!window.fetch || !window.EventSource || !window.DOMParser) {
      /* an old browser: the plain forms do it all, and a pending reply reloads the page
         (as the <noscript> refresh does without scripts) */
      if (transcript.querySelector(".msg.pending")) {
        window.setTimeout(function () { window.location.reload(); }, 3000);
      }
      return;
    }
    forgetOldDrafts();
    each(transcript, ".msg.pending[data-stream]", listen);
    messageForm();
    if (window.BroadcastChannel) {
      channel = new BroadcastChannel(transcript.getAttribute("data-drafts"));
      channel.onmessage = function () { sync({}); };
    }
    window.setInterval(poll, POLL_MS);
    document.addEventListener("visibilitychange", poll);
  }

  document.addEventListener("DOMContentLoaded", function () {
    textBoxes(document);
    stanceTimes(document);
    chat();
  });
})();
