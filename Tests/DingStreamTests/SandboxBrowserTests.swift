import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// The sandbox's chat page driven by a real headless Chromium through chromedriver's WebDriver
/// API, against the real `dingstream sandbox` binary (simulator, daemon and echo handler).
@Suite(
    .serialized,
    .enabled(
        if: Browser.installed || getuid() == 0,
        "needs Debian's chromium and chromium-driver (make deps installs them as root); skipped: not root and not installed"))
struct SandboxBrowserTests {
    @Test(.timeLimit(.minutes(2)))
    func chatPageShowsRepliesCardsAndTheFallbackPath() async throws {
        #expect(Browser.installed, "chromium or chromedriver is missing: run make deps (it installs chromium and chromium-driver)")
        guard Browser.installed else { return }
        let sandbox = try await SandboxProcess.start()
        defer { sandbox.stop() }
        let browser = try await Browser.start()
        do {
            try await Self.exercise(browser, sandbox)
        } catch {
            await browser.stop()
            throw BrowserError("\(error)\nthe sandbox's output ends with:\n\(sandbox.output.text.suffix(3000))")
        }
        await browser.stop()
    }

    static func exercise(_ browser: Browser, _ sandbox: SandboxProcess) async throws {
        try await browser.open(sandbox.pageURL)

        // Plain text: the echo handler's reply comes back through the session webhook.
        try await browser.send("hello from the browser")
        let echo = try await browser.waitFor(
            "the echo reply",
            """
            const m = [...document.querySelectorAll('.msg.bot')].find(e => e.textContent.includes('hello from the browser'));
            return m ? m.dataset.path + '|' + m.querySelector('.bubble').textContent : null;
            """)
        #expect(echo.hasPrefix("session webhook|echo from "))

        // Markdown: rendered, and the HTML in it shown as text, not markup.
        try await browser.send("**strong words** and <b>tags</b>")
        let strong = try await browser.waitFor(
            "the markdown reply rendered",
            """
            const s = [...document.querySelectorAll('.msg.bot .md strong')].find(e => e.textContent === 'strong words');
            return s ? s.closest('.md').innerHTML : null;
            """)
        #expect(strong.contains("&lt;b&gt;tags&lt;/b&gt;"))

        // An actionCard: a click sends the card callback, the handler's answer updates the card.
        try await browser.send("card")
        let button = try await browser.waitForElement("[data-card] button[data-action=\"Approve\"]")
        try await browser.click(button)
        let update = try await browser.waitFor(
            "the card update",
            "const u = document.querySelector('[data-card] .card-update'); return u && u.textContent.includes('Approve') ? u.textContent : null;")
        #expect(update.contains("Approve: done on"))

        // Expired webhooks: the next reply takes batchSend, after the webhook's refusal.
        try await browser.click(try await browser.waitForElement("#expire-webhooks"))
        _ = try await browser.waitFor("the expiry to take effect", "return document.body.dataset.webhooksExpired === 'yes' ? 'yes' : null;")
        try await browser.send("after the expiry")
        let fallback = try await browser.waitFor(
            "the reply through batchSend",
            """
            const m = [...document.querySelectorAll('.msg.bot')].find(e => e.textContent.includes('after the expiry'));
            return m ? m.dataset.path : null;
            """)
        #expect(fallback == "batchSend")
        let refusal = try await browser.waitFor(
            "the webhook's refusal", "const n = [...document.querySelectorAll('.notice')].find(e => e.textContent.includes('300001')); return n ? n.textContent : null;")
        #expect(refusal.contains("expired"))

        // A picture: its bytes reach the handler through the simulator's download API.
        let picture = sandbox.root + "-picture.png"
        // Chromium's own icon when there, so the page shows a real picture; any bytes would do.
        let bytes = FileManager.default.contents(atPath: "/usr/share/icons/hicolor/64x64/apps/chromium.png")
            ?? Data((0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try bytes.write(to: URL(fileURLWithPath: picture))
        defer { try? FileManager.default.removeItem(atPath: picture) }
        try await browser.upload(picture, into: "#picture-input")
        let got = try await browser.waitFor(
            "the reply to the picture",
            "const m = [...document.querySelectorAll('.msg.bot')].find(e => e.textContent.includes('got picture')); return m ? m.textContent : null;")
        #expect(got.contains("got picture (\(bytes.count) bytes)"))

        // The group: a message that does not mention the bot stays with the people; one that
        // does is answered in the group.
        try await browser.click(try await browser.waitForElement("#chat-group"))
        _ = try await browser.script("document.getElementById('sender').value = '0423298'; document.getElementById('at-bot').checked = false; return 'ok';")
        try await browser.send("just between us")
        _ = try await browser.waitFor("the unmentioned message", "return document.querySelector('#messages .not-sent') ? 'yes' : null;")
        _ = try await browser.script("document.getElementById('at-bot').checked = true; return 'ok';")
        try await browser.send("status of the group")
        let groupReply = try await browser.waitFor(
            "the group reply",
            """
            const m = [...document.querySelectorAll('#messages .msg.bot')].find(e => e.textContent.includes('status of the group'));
            return m ? m.dataset.path : null;
            """)
        #expect(groupReply == "groupSend")
        #expect(try await browser.script("return [...document.querySelectorAll('#messages .msg.bot')].some(e => e.textContent.includes('just between us'));") as? Bool == false)

        if let folder = ProcessInfo.processInfo.environment["SANDBOX_SCREENSHOTS"] {
            try await screenshots(browser, into: folder)
        }
    }

    /// `SANDBOX_SCREENSHOTS=docs make …`: the private chat as the test left it, then a group.
    static func screenshots(_ browser: Browser, into folder: String) async throws {
        try await browser.click(try await browser.waitForElement("#chat-private"))
        try await browser.click(try await browser.waitForElement("#restore-webhooks"))
        try await browser.send("# Release 1.4.2\n\n- **3** commits\n- tests *green*\n\n> deploy after 18:00")
        _ = try await browser.waitFor("the release notes", "return document.querySelector('.msg.bot .md h1') ? 'yes' : null;")
        try await browser.screenshot(to: folder + "/sandbox-private.png")
        try await browser.click(try await browser.waitForElement("#chat-group"))
        let shown = [
            ("0423298", "who is on call tonight?", "[...document.querySelectorAll('#messages .msg.bot')].some(e => e.textContent.includes('on call'))"),
            ("0423297", "link", "document.querySelector('#messages .link-card')"),
            ("0423299", "feed", "document.querySelector('#messages .feed')"),
        ]
        for (sender, text, condition) in shown {
            _ = try await browser.script("document.getElementById('sender').value = '\(sender)'; return 'ok';")
            try await browser.send(text)
            _ = try await browser.waitFor("the group reply to \(text)", "return \(condition) ? 'yes' : null;")
        }
        _ = try await browser.script("document.getElementById('at-bot').checked = false; document.getElementById('sender').value = '0423298'; return 'ok';")
        try await browser.send("thanks, all")
        _ = try await browser.waitFor("the unmentioned message", "return document.querySelectorAll('.not-sent').length > 1 ? 'yes' : null;")
        try await browser.screenshot(to: folder + "/sandbox-group.png")
    }
}

/// `dingstream sandbox` as a child process on free ports, in a folder of its own.
final class SandboxProcess: Sendable {
    let process: Process
    let root: String
    let pageURL: String
    let output: LineBuffer

    private init(process: Process, root: String, pageURL: String, output: LineBuffer) {
        self.process = process
        self.root = root
        self.pageURL = pageURL
        self.output = output
    }

    static func start() async throws -> SandboxProcess {
        guard let executable = DaemonProcess.executable else {
            throw BrowserError("no dingstream binary beside the tests; run swift build --build-tests")
        }
        let root = NSTemporaryDirectory() + "dingstream-sandbox-browser-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["sandbox", "--port", "0", "--listen", "127.0.0.1:0", "--directory", root]
        process.environment = ["PATH": "/usr/bin:/bin", "HOME": root, "LANG": "C.UTF-8"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        let output = LineBuffer()
        pipe.fileHandleForReading.readabilityHandler = { output.append($0.availableData) }
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && process.isRunning {
            let text = output.text
            if let line = text.split(separator: "\n").first(where: { $0.contains("Chat with the bot in a browser: ") }),
                let url = line.split(separator: " ").last
            {
                return SandboxProcess(process: process, root: root, pageURL: String(url), output: output)
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.terminate()
        throw BrowserError("the sandbox printed no page address within 60 s; its output:\n\(output.text)")
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}

struct BrowserError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A headless Chromium session through chromedriver (W3C WebDriver over HTTP and JSON).
final class Browser: Sendable {
    static let chromium = "/usr/bin/chromium"
    static let chromedriver = "/usr/bin/chromedriver"
    static var installed: Bool { access(chromium, X_OK) == 0 && access(chromedriver, X_OK) == 0 }
    /// Generous for a loaded machine; every wait ends as soon as its condition holds.
    static let patience: TimeInterval = 30

    let driver: Process
    let base: String
    let session: String

    private init(driver: Process, base: String, session: String) {
        self.driver = driver
        self.base = base
        self.session = session
    }

    static func start() async throws -> Browser {
        let driver = Process()
        driver.executableURL = URL(fileURLWithPath: chromedriver)
        driver.arguments = ["--port=0"]
        let pipe = Pipe()
        driver.standardOutput = pipe
        driver.standardError = FileHandle.nullDevice
        let output = LineBuffer()
        pipe.fileHandleForReading.readabilityHandler = { output.append($0.availableData) }
        try driver.run()
        var port: String?
        let deadline = Date().addingTimeInterval(patience)
        while port == nil && Date() < deadline && driver.isRunning {
            let text = output.text
            if let range = text.range(of: "started successfully on port ") {
                let digits = text[range.upperBound...].prefix { $0.isNumber }
                if !digits.isEmpty && text[range.upperBound...].dropFirst(digits.count).first == "." { port = String(digits) }
            }
            if port == nil { try await Task.sleep(for: .milliseconds(20)) }
        }
        guard let port else {
            kill(driver.processIdentifier, SIGKILL)
            throw BrowserError("chromedriver did not say its port within \(Int(patience)) s; it printed: \(output.text)")
        }
        let base = "http://127.0.0.1:\(port)"
        let options: [String: Any] = [
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,860", "--lang=en-US"],
        ]
        let capabilities: [String: Any] = ["capabilities": ["alwaysMatch": ["browserName": "chrome", "goog:chromeOptions": options]]]
        do {
            let answer = try await call(base + "/session", method: .POST, body: capabilities)
            guard let value = answer["value"] as? [String: Any], let session = value["sessionId"] as? String else {
                throw BrowserError("chromedriver started no session: \(answer)")
            }
            return Browser(driver: driver, base: base, session: session)
        } catch {
            kill(driver.processIdentifier, SIGKILL)
            throw error
        }
    }

    /// Ends the session (Chromium quits), then chromedriver, which does not stop on SIGTERM.
    func stop() async {
        var request = HTTPClientRequest(url: base + "/session/" + session)
        request.method = .DELETE
        // Read whole, so that the request has ended before chromedriver's connection is reset.
        if let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(10)) {
            _ = try? await response.body.collect(upTo: 1 << 20)
        }
        kill(driver.processIdentifier, SIGKILL)
        driver.waitUntilExit()
    }

    static func call(_ url: String, method: HTTPMethod, body: [String: Any]?) async throws -> [String: Any] {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: Array(try JSONSerialization.data(withJSONObject: body))))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let bytes = try await response.body.collect(upTo: 32 << 20)
        let object = (try? JSONSerialization.jsonObject(with: Data(bytes.readableBytesView))) as? [String: Any] ?? [:]
        guard response.status == .ok else {
            throw BrowserError("WebDriver \(method) \(url) answered \(response.status.code): \(object["value"] ?? String(buffer: bytes))")
        }
        return object
    }

    private func command(_ path: String, _ body: [String: Any]? = [:], method: HTTPMethod = .POST) async throws -> Any? {
        return try await Self.call(base + "/session/" + session + path, method: method, body: method == .GET ? nil : body)["value"]
    }

    func open(_ url: String) async throws {
        _ = try await command("/url", ["url": url])
    }

    /// Runs `body` as a function in the page; its return value.
    func script(_ body: String, _ arguments: [Any] = []) async throws -> Any? {
        try await command("/execute/sync", ["script": body, "args": arguments])
    }

    /// Polls `body` until it returns a string; that string.
    /// - Throws: `BrowserError` naming `what` after `patience`.
    func waitFor(_ what: String, _ body: String) async throws -> String {
        let deadline = Date().addingTimeInterval(Self.patience)
        while true {
            if let value = try await script(body) as? String { return value }
            guard Date() < deadline else {
                let messages = try? await script("return document.getElementById('messages').innerText;") as? String
                throw BrowserError("after \(Int(Self.patience)) s still waiting for \(what); the conversation shows:\n\(messages ?? "?")")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// The WebDriver id of the first element matching `selector`, once there is one.
    func waitForElement(_ selector: String) async throws -> String {
        let deadline = Date().addingTimeInterval(Self.patience)
        while true {
            if let found = try? await command("/element", ["using": "css selector", "value": selector]) as? [String: Any],
                let id = found.values.first as? String
            {
                return id
            }
            guard Date() < deadline else { throw BrowserError("no element \(selector) after \(Int(Self.patience)) s") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    func click(_ element: String) async throws {
        _ = try await command("/element/\(element)/click")
    }

    /// Types `text` into the composer and presses Send, as a user would (text of several lines
    /// is pasted: Enter alone would send the first line).
    func send(_ text: String) async throws {
        let box = try await waitForElement("#composer-text")
        _ = try await command("/element/\(box)/clear")
        if text.contains("\n") {
            _ = try await script("document.getElementById('composer-text').value = arguments[0]; return 'ok';", [text])
        } else {
            _ = try await command("/element/\(box)/value", ["text": text])
        }
        try await click(try await waitForElement("#send"))
        _ = try await waitFor("the composer to empty after sending \"\(text.prefix(30))\"", "return document.getElementById('composer-text').value === '' ? 'sent' : null;")
    }

    /// Chooses `file` in the file input `selector`, as a user picking it would.
    func upload(_ file: String, into selector: String) async throws {
        let input = try await waitForElement(selector)
        _ = try await command("/element/\(input)/value", ["text": file])
    }

    func screenshot(to path: String) async throws {
        guard let encoded = try await command("/screenshot", method: .GET) as? String, let png = Data(base64Encoded: encoded) else {
            throw BrowserError("chromedriver sent no screenshot")
        }
        try png.write(to: URL(fileURLWithPath: path))
    }
}
