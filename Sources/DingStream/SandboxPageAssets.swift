/// The sandbox chat page: plain HTML, CSS and JavaScript, no framework and nothing fetched from
/// elsewhere, compiled into the binary so that the page works offline.
enum SandboxPageAssets {
    static let html = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>dingstream sandbox</title>
        <link rel="stylesheet" href="/sandbox.css">
        </head>
        <body>
        <div id="app">
          <aside id="side">
            <div class="brand">dingstream <span>sandbox</span></div>
            <nav id="chats">
              <button class="chat-tab active" id="chat-private" data-chat="private">
                <span class="avatar bot">B</span><span class="chat-name">Sandbox bot<small>private chat with Zhang San</small></span><span class="badge" hidden></span>
              </button>
              <button class="chat-tab" id="chat-group" data-chat="group">
                <span class="avatar group">G</span><span class="chat-name">Sandbox group<small>Zhang San, Li Si, Wang Wu, bot</small></span><span class="badge" hidden></span>
              </button>
            </nav>
            <section id="controls">
              <h3>Controls</h3>
              <p id="socket-state" class="muted">socket: …</p>
              <button id="expire-webhooks" title="Session webhooks answer 300001 (expired) until restored: replies take the OpenAPI">Expire the session webhooks now</button>
              <button id="restore-webhooks" title="New messages come with a working session webhook again" hidden>Restore the session webhooks</button>
              <button id="throttle-openapi" title="The next 3 batchSend / groupSend calls get 403 QpsLimit">Throttle the OpenAPI (3 sends)</button>
              <button id="drop-socket" title="Reset the bot's Stream socket without a close frame">Drop the socket</button>
              <form id="event-form">
                <label>Event type <input id="event-type" value="chat_update_title" autocomplete="off"></label>
                <label>Body (JSON) <textarea id="event-body" rows="3">{"title":"New title"}</textarea></label>
                <button id="send-event" type="submit">Send the event</button>
              </form>
              <p class="muted hint">Try: <code>hello</code>, <code># Title</code> or <code>**bold**</code>, <code>card</code>, <code>link</code>, <code>feed</code>.</p>
            </section>
          </aside>
          <main id="conversation">
            <header id="chat-header"><span id="chat-title">Sandbox bot</span><small id="chat-subtitle">private chat</small></header>
            <div id="messages" aria-live="polite"></div>
            <form id="composer">
              <div class="composer-tools">
                <label id="sender-label" hidden>as <select id="sender">
                  <option value="0423297">Zhang San</option>
                  <option value="0423298">Li Si</option>
                  <option value="0423299">Wang Wu</option>
                </select></label>
                <label id="at-label" hidden><input type="checkbox" id="at-bot" checked> @Sandbox bot</label>
                <button type="button" id="attach-picture" title="Send a picture">Picture</button>
                <button type="button" id="attach-file" title="Send a file">File</button>
                <input type="file" id="picture-input" accept="image/*" hidden>
                <input type="file" id="file-input" hidden>
                <span id="status" role="status"></span>
              </div>
              <div class="composer-row">
                <textarea id="composer-text" rows="2" placeholder="Write a message; Enter sends, Shift+Enter breaks the line"></textarea>
                <button id="send" type="submit">Send</button>
              </div>
            </form>
          </main>
          <aside id="activity">
            <h3>Handler runs</h3>
            <table id="runs"><thead><tr><th>handler</th><th>kind</th><th>exit</th><th>ms</th><th>stderr</th></tr></thead><tbody></tbody></table>
            <h3>Spool</h3>
            <table id="spool"><thead><tr><th>state</th><th>from</th><th>text</th><th>tries</th></tr></thead><tbody></tbody></table>
            <p id="spool-problem" class="muted"></p>
          </aside>
        </div>
        <script src="/sandbox.js"></script>
        </body>
        </html>

        """#

    static let css = #"""
        * { box-sizing: border-box; }
        [hidden] { display: none !important; }
        html, body { margin: 0; height: 100%; overflow: hidden; font: 14px/1.45 -apple-system, "Segoe UI", "PingFang SC", "Noto Sans", "DejaVu Sans", sans-serif; color: #171a1d; background: #f2f3f5; }
        #app { display: grid; grid-template-columns: 250px minmax(360px, 1fr) 330px; height: 100vh; }
        #side { background: #fff; border-right: 1px solid #e5e6eb; display: flex; flex-direction: column; overflow-y: auto; }
        .brand { font-weight: 600; font-size: 16px; padding: 14px 16px; border-bottom: 1px solid #eee; }
        .brand span { color: #3296fa; font-weight: 500; }
        #chats { display: flex; flex-direction: column; }
        .chat-tab { display: flex; align-items: center; gap: 10px; border: 0; background: none; padding: 10px 14px; text-align: left; cursor: pointer; font: inherit; }
        .chat-tab:hover { background: #f5f6f7; }
        .chat-tab.active { background: #e8f3ff; }
        .chat-name { flex: 1; display: flex; flex-direction: column; }
        .chat-name small { color: #858a93; font-size: 12px; }
        .badge { background: #f54a45; color: #fff; border-radius: 9px; font-size: 11px; padding: 0 6px; }
        .avatar { width: 36px; height: 36px; border-radius: 8px; display: inline-flex; align-items: center; justify-content: center; color: #fff; font-weight: 600; flex: none; background: #7a8599; }
        .avatar.bot { background: #3296fa; }
        .avatar.group { background: #00b386; }
        #controls { padding: 8px 14px 14px; border-top: 1px solid #eee; margin-top: 8px; }
        #controls h3, #activity h3 { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #858a93; margin: 12px 0 6px; }
        #controls button { display: block; width: 100%; margin: 6px 0; }
        #controls label { display: block; font-size: 12px; color: #5f6570; margin-top: 6px; }
        #controls input, #controls textarea { width: 100%; font: 12px ui-monospace, "DejaVu Sans Mono", monospace; padding: 4px; border: 1px solid #d5d8de; border-radius: 4px; }
        button { font: inherit; border: 1px solid #d5d8de; background: #fff; border-radius: 6px; padding: 5px 10px; cursor: pointer; }
        button:hover { border-color: #3296fa; color: #3296fa; }
        button:disabled { opacity: .5; cursor: default; }
        .muted { color: #858a93; font-size: 12px; }
        .hint code { background: #f2f3f5; padding: 0 3px; border-radius: 3px; }
        #conversation { display: flex; flex-direction: column; min-width: 0; min-height: 0; height: 100vh; }
        #chat-header { background: #fff; border-bottom: 1px solid #e5e6eb; padding: 12px 18px; font-weight: 600; font-size: 15px; }
        #chat-header small { font-weight: 400; color: #858a93; margin-left: 8px; font-size: 12px; }
        #messages { flex: 1; overflow-y: auto; padding: 14px 18px; }
        .msg { display: flex; gap: 8px; margin: 10px 0; align-items: flex-start; }
        .msg.mine { flex-direction: row-reverse; }
        .msg .body { max-width: 74%; display: flex; flex-direction: column; }
        .msg.mine .body { align-items: flex-end; }
        .msg .nick { font-size: 12px; color: #858a93; margin-bottom: 2px; }
        .bubble { background: #fff; border-radius: 8px; padding: 8px 12px; overflow-wrap: anywhere; box-shadow: 0 1px 1px rgba(0,0,0,.04); }
        .msg.mine .bubble { background: #cce4ff; }
        .text { white-space: pre-wrap; }
        .at { color: #3296fa; }
        .meta { font-size: 11px; color: #a0a5ad; margin-top: 2px; }
        .path { font-size: 11px; color: #8f959e; margin-top: 3px; }
        .path b { font-weight: 500; color: #3296fa; }
        .notice { text-align: center; font-size: 12px; color: #858a93; margin: 8px 0; }
        .notice span { background: #e5e6eb; border-radius: 10px; padding: 2px 10px; }
        .not-sent { font-size: 11px; color: #a0a5ad; }
        .md h1, .md h2, .md h3, .md h4, .md h5, .md h6 { margin: 4px 0; line-height: 1.3; }
        .md h1 { font-size: 20px; } .md h2 { font-size: 18px; } .md h3 { font-size: 16px; } .md h4, .md h5, .md h6 { font-size: 14px; }
        .md p { margin: 4px 0; }
        .md ul, .md ol { margin: 4px 0; padding-left: 20px; }
        .md blockquote { margin: 4px 0; padding-left: 8px; border-left: 3px solid #d5d8de; color: #5f6570; }
        .md img { max-width: 100%; border-radius: 4px; }
        .md a { color: #3296fa; text-decoration: none; }
        .card { background: #fff; border-radius: 8px; overflow: hidden; min-width: 260px; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
        .card .card-body { padding: 10px 12px; }
        .card .buttons { display: flex; border-top: 1px solid #eee; }
        .card .buttons.vertical { flex-direction: column; }
        .card .buttons button { flex: 1; border: 0; border-radius: 0; padding: 9px; color: #3296fa; background: #fff; }
        .card .buttons button + button { border-left: 1px solid #eee; }
        .card .buttons.vertical button + button { border-left: 0; border-top: 1px solid #eee; }
        .card .buttons button.chosen { background: #e8f3ff; font-weight: 600; }
        .card-update { background: #f0faf5; color: #00864e; border-top: 1px solid #d8f0e3; padding: 6px 12px; font-size: 13px; }
        .link-card { display: flex; gap: 10px; padding: 10px 12px; min-width: 260px; color: inherit; text-decoration: none; }
        .link-card .pic { width: 52px; height: 52px; border-radius: 4px; background: #e8f3ff center/cover; flex: none; }
        .link-card .title { font-weight: 600; }
        .link-card .desc { color: #5f6570; font-size: 13px; }
        .feed a { display: flex; justify-content: space-between; gap: 8px; padding: 8px 12px; border-top: 1px solid #eee; color: #171a1d; text-decoration: none; }
        .feed a:first-child { border-top: 0; font-weight: 600; }
        .attachment img { max-width: 220px; max-height: 220px; border-radius: 6px; display: block; }
        .file-chip { display: flex; align-items: center; gap: 8px; }
        .file-chip .icon { width: 30px; height: 36px; background: #3296fa; color: #fff; border-radius: 4px; font-size: 10px; display: flex; align-items: center; justify-content: center; }
        pre.raw { white-space: pre-wrap; font-size: 12px; margin: 0; }
        #composer { background: #fff; border-top: 1px solid #e5e6eb; padding: 8px 14px 12px; }
        .composer-tools { display: flex; gap: 8px; align-items: center; font-size: 13px; margin-bottom: 6px; flex-wrap: wrap; }
        #status { color: #f54a45; font-size: 12px; }
        .composer-row { display: flex; gap: 8px; }
        #composer-text { flex: 1; resize: vertical; font: inherit; border: 1px solid #d5d8de; border-radius: 6px; padding: 6px 8px; }
        #send { background: #3296fa; color: #fff; border-color: #3296fa; padding: 0 18px; }
        #activity { background: #fff; border-left: 1px solid #e5e6eb; padding: 0 12px 12px; overflow-y: auto; font-size: 12px; }
        #activity table { width: 100%; border-collapse: collapse; table-layout: fixed; }
        #activity th { text-align: left; color: #858a93; font-weight: 500; border-bottom: 1px solid #eee; padding: 3px 2px; }
        #activity td { border-bottom: 1px solid #f2f3f5; padding: 3px 2px; vertical-align: top; overflow: hidden; text-overflow: ellipsis; }
        #activity td.stderr { white-space: pre-wrap; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11px; color: #5f6570; }
        #runs th:nth-child(1) { width: 22%; } #runs th:nth-child(2) { width: 12%; } #runs th:nth-child(3) { width: 10%; } #runs th:nth-child(4) { width: 11%; }
        #spool th:nth-child(1) { width: 17%; } #spool th:nth-child(2) { width: 25%; } #spool th:nth-child(4) { width: 11%; }
        .exit-ok { color: #00864e; font-weight: 600; } .exit-bad { color: #f54a45; font-weight: 600; }
        .state { border-radius: 3px; padding: 0 4px; background: #f2f3f5; }
        .state-done { background: #e3f6ec; color: #00864e; } .state-failed { background: #fde7e7; color: #d0302b; }
        .state-outbox { background: #fff4e0; color: #b26b00; } .state-running, .state-new { background: #e8f3ff; color: #1f6fd1; }

        """#

    static let script = #"""
        "use strict";
        // The sandbox page: polls /api/chat for new items and /api/activity for the spool and the
        // handler runs; renders replies the way DingTalk shows them.

        const me = "0423297";
        const people = { "0423297": "Zhang San", "0423298": "Li Si", "0423299": "Wang Wu" };
        const state = { chat: "private", last: 0, items: [], updates: new Map(), unread: { private: 0, group: 0 } };
        const $ = (id) => document.getElementById(id);

        function el(tag, attributes, ...children) {
          const node = document.createElement(tag);
          for (const [key, value] of Object.entries(attributes || {})) {
            if (value === undefined || value === null || value === false) continue;
            if (key === "className") node.className = value;
            else if (key === "html") node.innerHTML = value;
            else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
            else node.setAttribute(key, value === true ? "" : value);
          }
          for (const child of children.flat()) {
            if (child === undefined || child === null || child === false) continue;
            node.append(child instanceof Node ? child : document.createTextNode(String(child)));
          }
          return node;
        }

        // ---- Markdown: DingTalk's subset (headings, bold, italic, links, images, lists, quotes,
        // line breaks). Everything is HTML-escaped first; only the markup below becomes tags.
        function escapeHTML(text) {
          return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
        }

        function safeURL(url, forImage) {
          const trimmed = url.trim();
          const allowed = forImage ? /^(https?:\/\/|\/api\/files\/)/i : /^(https?:\/\/|mailto:|dtmd:\/\/)/i;
          return allowed.test(trimmed) ? trimmed : null;
        }

        function inline(raw) {
          const tokens = [];
          const keep = (html) => "\u0000" + (tokens.push(html) - 1) + "\u0000";
          let text = String(raw).replace(/\u0000/g, "");
          text = text.replace(/!\[([^\]]*)\]\(([^)\s]+)\)/g, (all, alt, url) => {
            const safe = safeURL(url, true);
            return safe ? keep('<img src="' + escapeHTML(safe) + '" alt="' + escapeHTML(alt) + '">') : all;
          });
          text = text.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (all, label, url) => {
            const safe = safeURL(url, false);
            return safe ? keep('<a href="' + escapeHTML(safe) + '" target="_blank" rel="noopener noreferrer">' + escapeHTML(label) + "</a>") : all;
          });
          let html = escapeHTML(text);
          html = html.replace(/\*\*(.+?)\*\*/g, "<strong>$1</strong>").replace(/__(.+?)__/g, "<strong>$1</strong>");
          html = html.replace(/(^|[^*])\*(?!\s)([^*]+?)\*/g, "$1<em>$2</em>").replace(/(^|[^\w])_(?!\s)([^_]+?)_(?!\w)/g, "$1<em>$2</em>");
          return html.replace(/\u0000(\d+)\u0000/g, (all, index) => tokens[Number(index)]);
        }

        function renderMarkdown(source) {
          const lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
          const out = [];
          let paragraph = [];
          let list = null;
          let quote = [];
          const flushParagraph = () => { if (paragraph.length) out.push("<p>" + paragraph.join("<br>") + "</p>"); paragraph = []; };
          const flushList = () => { if (list) out.push("<" + list.tag + ">" + list.items.map((i) => "<li>" + i + "</li>").join("") + "</" + list.tag + ">"); list = null; };
          const flushQuote = () => { if (quote.length) out.push("<blockquote>" + quote.join("<br>") + "</blockquote>"); quote = []; };
          const flushAll = () => { flushParagraph(); flushList(); flushQuote(); };
          for (const line of lines) {
            let m;
            if (!line.trim()) { flushAll(); continue; }
            if ((m = /^(#{1,6})\s+(.*)$/.exec(line))) { flushAll(); out.push("<h" + m[1].length + ">" + inline(m[2]) + "</h" + m[1].length + ">"); continue; }
            if ((m = /^>\s?(.*)$/.exec(line))) { flushParagraph(); flushList(); quote.push(inline(m[1])); continue; }
            const bullet = /^\s*[-*+]\s+(.*)$/.exec(line);
            const numbered = /^\s*\d+[.)]\s+(.*)$/.exec(line);
            if (bullet || numbered) {
              flushParagraph(); flushQuote();
              const tag = bullet ? "ul" : "ol";
              if (list && list.tag !== tag) flushList();
              if (!list) list = { tag, items: [] };
              list.items.push(inline((bullet || numbered)[1]));
              continue;
            }
            flushList(); flushQuote();
            paragraph.push(inline(line));
          }
          flushAll();
          return out.join("");
        }

        // ---- Messages: webhook bodies and OpenAPI sends (msgKey + msgParam) in one shape.
        function normalise(body) {
          if (!body || typeof body !== "object") return { msgtype: "text", text: { content: String(body) } };
          if (body.msgtype) return body;
          if (!body.msgKey) return { msgtype: "unknown", raw: body };
          let p = {};
          try { p = typeof body.msgParam === "string" ? JSON.parse(body.msgParam) : body.msgParam || {}; } catch (e) { p = {}; }
          switch (body.msgKey) {
            case "sampleText": return { msgtype: "text", text: { content: p.content } };
            case "sampleMarkdown": return { msgtype: "markdown", markdown: { title: p.title, text: p.text } };
            case "sampleLink": return { msgtype: "link", link: { title: p.title, text: p.text, messageUrl: p.messageUrl, picUrl: p.picUrl } };
            case "sampleImageMsg": return { msgtype: "image", image: { picURL: p.photoURL } };
            case "sampleActionCard": return { msgtype: "actionCard", actionCard: { title: p.title, text: p.text, singleTitle: p.singleTitle, singleURL: p.singleURL } };
            case "sampleFile": return { msgtype: "file", file: { fileName: p.fileName, fileType: p.fileType } };
          }
          const multi = /^sampleActionCard([2-6])$/.exec(body.msgKey);
          if (multi) {
            const btns = [];
            for (let i = 1; p["actionTitle" + i] !== undefined; i++) btns.push({ title: p["actionTitle" + i], actionURL: p["actionURL" + i] });
            return { msgtype: "actionCard", actionCard: { title: p.title, text: p.text, btns, btnOrientation: btns.length > 2 ? "0" : "1" } };
          }
          return { msgtype: "unknown", raw: body };
        }

        function renderBotMessage(item) {
          const m = normalise(item.body);
          const fields = m[m.msgtype] || {};
          switch (m.msgtype) {
            case "text":
              return el("div", { className: "bubble text" }, fields.content || "");
            case "markdown":
              return el("div", { className: "bubble md", html: renderMarkdown(fields.text) });
            case "actionCard": {
              const buttons = fields.singleTitle ? [{ title: fields.singleTitle, actionURL: fields.singleURL }] : fields.btns || [];
              const card = el("div", { className: "card", "data-card": item.id },
                el("div", { className: "card-body md", html: renderMarkdown(fields.text || fields.title) }),
                el("div", { className: "buttons" + (fields.btnOrientation === "1" ? "" : " vertical") },
                  buttons.map((b) => el("button", { type: "button", "data-action": b.title, title: b.actionURL || "", onclick: () => click(item, fields.title, b.title) }, b.title))));
              const update = state.updates.get(item.id);
              if (update) applyUpdate(card, update);
              return card;
            }
            case "link": {
              const url = safeURL(fields.messageUrl || "", false);
              const pic = safeURL(fields.picUrl || "", true);
              return el("div", { className: "card" }, el("a", { className: "link-card", href: url || undefined, target: "_blank", rel: "noopener noreferrer" },
                el("div", {}, el("div", { className: "title" }, fields.title || ""), el("div", { className: "desc" }, fields.text || "")),
                pic ? el("div", { className: "pic", style: "background-image:url('" + encodeURI(pic) + "')" }) : null));
            }
            case "feedCard":
              return el("div", { className: "card feed" }, (fields.links || []).map((l) =>
                el("a", { href: safeURL(l.messageURL || "", false) || undefined, target: "_blank", rel: "noopener noreferrer" }, el("span", {}, l.title || ""))));
            case "image": {
              const pic = safeURL(fields.picURL || "", true);
              return el("div", { className: "bubble attachment" }, pic ? el("img", { src: pic, alt: "picture" }) : "[picture]");
            }
            default:
              return el("div", { className: "bubble" }, el("div", { className: "muted" }, "DingTalk shows this as an unsupported message (" + (m.msgtype || "no msgtype") + ")"),
                el("pre", { className: "raw" }, JSON.stringify(m.raw || m, null, 1)));
          }
        }

        function renderUserMessage(item) {
          const content = [];
          if (item.msgtype === "picture") content.push(el("div", { className: "bubble attachment" }, el("img", { src: item.file, alt: item.fileName })));
          else if (item.msgtype === "file") content.push(el("div", { className: "bubble file-chip" }, el("span", { className: "icon" }, "FILE"), el("span", {}, item.fileName, el("br"), el("small", { className: "muted" }, item.fileSize + " bytes"))));
          else content.push(el("div", { className: "bubble text" }, item.at ? el("span", { className: "at" }, "@Sandbox bot ") : null, item.text));
          if (!item.toBot) content.push(el("div", { className: "not-sent" }, "not sent to the bot: it was not @-mentioned"));
          return content;
        }

        function renderItem(item) {
          if (item.from === "notice") return el("div", { className: "notice", "data-item": item.id }, el("span", {}, item.text));
          const mine = item.from === "user" && item.sender === me;
          const name = item.from === "bot" ? "Sandbox bot" : item.nick;
          const avatar = el("span", { className: "avatar" + (item.from === "bot" ? " bot" : "") }, item.from === "bot" ? "B" : name.slice(0, 1));
          const body = el("div", { className: "body" });
          if (state.chat === "group" && !mine) body.append(el("div", { className: "nick" }, name));
          if (item.from === "bot") {
            body.append(renderBotMessage(item));
            body.append(el("div", { className: "path", "data-path": item.path }, "via ", el("b", {}, item.path)));
          } else body.append(...renderUserMessage(item));
          return el("div", { className: "msg " + item.from + (mine ? " mine" : ""), "data-item": item.id, "data-path": item.path }, avatar, body);
        }

        function applyUpdate(card, update) {
          let line = card.querySelector(".card-update");
          if (!line) { line = el("div", { className: "card-update" }); card.append(line); }
          const params = update.response && update.response.cardData && update.response.cardData.cardParamMap;
          if (params && typeof params === "object") {
            if (typeof params.title === "string" || typeof params.text === "string") {
              card.querySelector(".card-body").innerHTML = renderMarkdown(params.text || params.title);
            }
            const shown = Object.entries(params).filter(([k]) => k !== "title" && k !== "text");
            line.textContent = shown.length ? shown.map(([k, v]) => (k === "status" ? "" : k + ": ") + v).join(" · ") : "card updated";
          } else {
            line.textContent = "clicked " + update.action + " (the handler sent no card update)";
          }
          for (const button of card.querySelectorAll(".buttons button")) {
            button.disabled = false;
            button.classList.toggle("chosen", button.dataset.action === update.action);
          }
        }

        function visible(item) {
          return item.from !== "update" && (item.chat === state.chat || item.chat === "all");
        }

        function show(items, fresh = true) {
          const box = $("messages");
          const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
          for (const item of items) {
            if (item.from === "update") {
              state.updates.set(item.target, item);
              const card = box.querySelector('[data-card="' + item.target + '"]');
              if (card) applyUpdate(card, item);
            } else if (visible(item)) {
              box.append(renderItem(item));
            } else if (fresh && item.chat in state.unread && item.from === "bot") {
              state.unread[item.chat] += 1;
            }
          }
          for (const tab of document.querySelectorAll(".chat-tab")) {
            const count = state.unread[tab.dataset.chat];
            const badge = tab.querySelector(".badge");
            badge.hidden = !count;
            badge.textContent = count;
          }
          if (atBottom || items.some((i) => i.from === "user")) box.scrollTop = box.scrollHeight;
        }

        function switchChat(chat) {
          state.chat = chat;
          state.unread[chat] = 0;
          for (const tab of document.querySelectorAll(".chat-tab")) tab.classList.toggle("active", tab.dataset.chat === chat);
          $("chat-title").textContent = chat === "group" ? "Sandbox group" : "Sandbox bot";
          $("chat-subtitle").textContent = chat === "group" ? "group chat · 4 members" : "private chat";
          $("sender-label").hidden = chat !== "group";
          $("at-label").hidden = chat !== "group";
          $("messages").textContent = "";
          show(state.items, false);
          $("messages").scrollTop = $("messages").scrollHeight;
        }

        // ---- Talking to the sandbox.
        async function api(path, body) {
          const response = await fetch(path, body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
          const answer = await response.json().catch(() => ({ error: "the sandbox answered " + response.status }));
          if (!response.ok) throw new Error(answer.error || "the sandbox answered " + response.status);
          return answer;
        }

        function report(error) {
          $("status").textContent = error ? String(error.message || error) : "";
        }

        async function pollChat() {
          try {
            const answer = await api("/api/chat?since=" + state.last);
            if (answer.items.length) {
              state.items.push(...answer.items);
              state.last = answer.last;
              show(answer.items);
            }
            document.body.dataset.connected = "yes";
          } catch (error) {
            document.body.dataset.connected = "no";
          }
          setTimeout(pollChat, 300);
        }

        function cell(text, className) {
          return el("td", { className, title: text }, text);
        }

        async function pollActivity() {
          try {
            const a = await api("/api/activity");
            $("socket-state").textContent = "socket: " + (a.sockets > 0 ? a.sockets + " connected" : "none connected (dingstream reconnects)");
            const runs = $("runs").tBodies[0];
            runs.replaceChildren(...a.runs.map((r) => el("tr", { "data-entry": r.entry },
              cell(r.handler), cell(r.kind), cell(r.exitCode === null ? "—" : String(r.exitCode), r.exitCode === 0 ? "exit-ok" : "exit-bad"),
              cell(String(r.ms)), cell(r.stderr.trim() || (r.exitCode === null ? r.status : ""), "stderr"))));
            const spool = $("spool").tBodies[0];
            spool.replaceChildren(...a.spool.map((e) => el("tr", { "data-entry": e.name },
              el("td", {}, el("span", { className: "state state-" + e.state }, e.state)), cell(e.sender), cell(e.text), cell(String(e.attempts)))));
            $("spool-problem").textContent = a.spoolProblem || "";
            $("restore-webhooks").hidden = !a.webhooksExpired;
            document.body.dataset.webhooksExpired = a.webhooksExpired ? "yes" : "no";
          } catch (error) {
            $("socket-state").textContent = "the sandbox does not answer";
          }
          setTimeout(pollActivity, 1000);
        }

        async function click(item, title, action) {
          const card = document.querySelector('[data-card="' + item.id + '"]');
          if (card) for (const button of card.querySelectorAll(".buttons button")) button.disabled = true;
          try {
            const answer = await api("/api/card", { reply: item.id, action, title: title || "", sender: state.chat === "group" ? $("sender").value : me });
            const update = { target: item.id, action, response: answer.response };
            state.updates.set(item.id, update);
            if (card) applyUpdate(card, update);
            report(null);
          } catch (error) {
            if (card) for (const button of card.querySelectorAll(".buttons button")) button.disabled = false;
            report(error);
          }
        }

        function message(extra) {
          return Object.assign({ chat: state.chat, sender: state.chat === "group" ? $("sender").value : me, at: state.chat === "group" && $("at-bot").checked }, extra);
        }

        async function sendText(event) {
          event.preventDefault();
          const box = $("composer-text");
          const text = box.value.trim();
          if (!text) return;
          try {
            await api("/api/send", message({ text }));
            box.value = "";
            report(null);
          } catch (error) { report(error); }
        }

        function attach(kind, input) {
          const file = input.files[0];
          input.value = "";
          if (!file) return;
          const reader = new FileReader();
          reader.onload = async () => {
            const base64 = String(reader.result).replace(/^data:[^,]*,/, "");
            try {
              await api("/api/send", message({ attachment: { kind, name: file.name, type: file.type || "application/octet-stream", base64 } }));
              report(null);
            } catch (error) { report(error); }
          };
          reader.readAsDataURL(file);
        }

        async function control(body) {
          try { await api("/api/control", body); report(null); } catch (error) { report(error); }
        }

        $("composer").addEventListener("submit", sendText);
        $("composer-text").addEventListener("keydown", (event) => {
          if (event.key === "Enter" && !event.shiftKey && !event.isComposing) sendText(event);
        });
        for (const tab of document.querySelectorAll(".chat-tab")) tab.addEventListener("click", () => switchChat(tab.dataset.chat));
        $("attach-picture").addEventListener("click", () => $("picture-input").click());
        $("attach-file").addEventListener("click", () => $("file-input").click());
        $("picture-input").addEventListener("change", () => attach("picture", $("picture-input")));
        $("file-input").addEventListener("change", () => attach("file", $("file-input")));
        $("expire-webhooks").addEventListener("click", () => control({ action: "expireWebhooks" }));
        $("restore-webhooks").addEventListener("click", () => control({ action: "restoreWebhooks" }));
        $("throttle-openapi").addEventListener("click", () => control({ action: "throttleOpenAPI", count: 3 }));
        $("drop-socket").addEventListener("click", () => control({ action: "dropSocket" }));
        $("event-form").addEventListener("submit", (event) => {
          event.preventDefault();
          control({ action: "event", eventType: $("event-type").value.trim(), data: $("event-body").value });
        });
        if (location.hash === "#group") switchChat("group");
        pollChat();
        pollActivity();

        """#
}
