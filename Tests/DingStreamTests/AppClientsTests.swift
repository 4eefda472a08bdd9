import Logging
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
    @Test func reloadKeepsTheClientsOfUnchangedAppsOnly() async throws {
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
}
