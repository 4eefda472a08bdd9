import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import Simulator
import StreamProtocol
import Testing

@testable import DingStream
@testable import Replies

@Suite struct AppClientsTests {
    private func configuration(secret: String) -> Configuration {
        var configuration = Configuration()
        configuration.apps = [
            Configuration.App(name: "helpdesk", clientID: "dinghelpdesk", clientSecret: secret),
            Configuration.App(name: "ops", clientID: "dingops", clientSecret: "ops-secret"),
        ]
        return configuration
    }

    /// A reload must not throw away the token cache of apps it did not touch, nor keep clients of
    /// apps it changed.
    @Test(.timeLimit(.minutes(1))) func reloadKeepsTheClientsOfUnchangedAppsOnly() async throws {
        let clients = AppClients(environment: [:], logger: Logger(label: "test"), retireAfter: .zero)
        let first = clients.clients(for: configuration(secret: "one"))
        let same = clients.clients(for: configuration(secret: "one"))
        let changed = clients.clients(for: configuration(secret: "two"))
        var withoutOps = configuration(secret: "two")
        withoutOps.apps.removeLast()
        let removed = clients.clients(for: withoutOps)

        let helpdesk = try #require(first["helpdesk"]?.openAPI.tokens)
        let ops = try #require(first["ops"]?.openAPI.tokens)
        #expect(same["helpdesk"]?.openAPI.tokens === helpdesk)
        #expect(same["ops"]?.openAPI.tokens === ops)
        #expect(changed["helpdesk"]?.openAPI.tokens !== helpdesk)
        #expect(changed["ops"]?.openAPI.tokens === ops)
        #expect(removed.keys.sorted() == ["helpdesk"])
        await clients.shutdown()
    }

    /// A client retired by a reload belongs to the clients object until it is shut down: at a later
    /// reload once due, and at the stop in any case, never by a task of its own that outlives them.
    @Test(.timeLimit(.minutes(1))) func retiredClientsAreShutDownByLaterReloadsAndAtTheStop() async throws {
        let soon = AppClients(environment: [:], logger: Logger(label: "test"), retireAfter: .zero)
        let first = try #require(soon.clients(for: configuration(secret: "one"))["helpdesk"]?.http)
        _ = soon.clients(for: configuration(secret: "two"))
        _ = soon.clients(for: configuration(secret: "two"))
        try await waitUntilShutDown(first)
        await soon.shutdown()

        let late = AppClients(environment: [:], logger: Logger(label: "test"), retireAfter: .seconds(3600))
        let retired = try #require(late.clients(for: configuration(secret: "one"))["helpdesk"]?.http)
        let kept = try #require(late.clients(for: configuration(secret: "two"))["ops"]?.http)
        #expect(try await isUsable(retired), "not due yet: in-flight work may still use it")
        await late.shutdown()
        #expect(try await !isUsable(retired))
        #expect(try await !isUsable(kept))
    }

    /// With no app's client set up (here a CA file that is not there), webhook replies still go
    /// out, on a client of the clients object's own: one event loop, as `wholeResponse` requires
    /// (a debug build asserts it), and shut down at the stop.
    @Test(.timeLimit(.minutes(1))) func webhookRepliesGoOutWhenNoAppHasAClient() async throws {
        try await DingTalkSimulator.withRunning(.single("helpdesk")) { sim in
            var configuration = Configuration()
            var app = Configuration.App(name: "helpdesk", clientID: "dinghelpdesk", clientSecret: "s")
            app.apiBase = sim.baseURL
            app.caFile = "/nonexistent/dingstream-test-ca.pem"
            configuration.apps = [app]
            let appClients = AppClients(environment: [:], logger: Logger(label: "test"))
            let clients = appClients.clients(for: configuration)
            #expect(clients.isEmpty, "the CA file is missing: the app gets no client")

            let message = try sim.injectText("ping", app: "helpdesk")
            let data = try JSONSerialization.jsonObject(with: Data(message.data.utf8)) as? [String: Any] ?? [:]
            let bot = try #require(BotMessage(data: data))
            let outcome = await appClients.deliverer(configuration, clients: clients).deliver(
                [.text("pong")], to: ReplyTarget(app: "helpdesk", message: bot),
                firstAttemptAt: Int64(Date().timeIntervalSince1970 * 1000), progress: { _ in })
            #expect(outcome == .delivered(paths: [.sessionWebhook], reportedUsers: []))
            #expect(sim.webhookReplies(app: "helpdesk").map(\.msgId) == [message.msgId])
            await appClients.shutdown()
        }
    }

    /// Whether the client still takes requests; the address refuses at once when it does.
    private func isUsable(_ client: HTTPClient) async throws -> Bool {
        do {
            _ = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:1/"), timeout: .seconds(5))
            return true
        } catch let error as HTTPClientError where error == .alreadyShutdown {
            return false
        } catch {
            return true
        }
    }

    private func waitUntilShutDown(_ client: HTTPClient) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while try await isUsable(client) {
            try #require(ContinuousClock.now < deadline, "a due client was not shut down at the next reload")
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}
