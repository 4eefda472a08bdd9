import Logging
import Testing

@testable import DingStream
@testable import Replies

@Suite struct ReplyClientsTests {
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
    @Test func reloadKeepsTheClientsOfUnchangedAppsOnly() async throws {
        let clients = ReplyClients(environment: [:], logger: Logger(label: "test"), retireAfter: .zero)
        let first = clients.deliverer(for: configuration(secret: "one"))
        let same = clients.deliverer(for: configuration(secret: "one"))
        let changed = clients.deliverer(for: configuration(secret: "two"))
        var withoutOps = configuration(secret: "two")
        withoutOps.apps.removeLast()
        let removed = clients.deliverer(for: withoutOps)

        let helpdesk = try #require(first.clients["helpdesk"]?.tokens)
        let ops = try #require(first.clients["ops"]?.tokens)
        #expect(same.clients["helpdesk"]?.tokens === helpdesk)
        #expect(same.clients["ops"]?.tokens === ops)
        #expect(changed.clients["helpdesk"]?.tokens !== helpdesk)
        #expect(changed.clients["ops"]?.tokens === ops)
        #expect(removed.clients.keys.sorted() == ["helpdesk"])
        await clients.shutdown()
    }
}
