import AsyncHTTPClient
import Foundation
import Logging

/// Posts replies to a message's session webhook (PROTOCOL.md section 4). The webhook answers
/// HTTP 200 even on failure; the `errcode` in the body decides.
public struct SessionWebhookClient: Sendable {
    private let exchange: JSONExchange
    private let logger: Logger
    static let endpoint = "session webhook"

    /// - Parameter httpClient: owned by the caller, who shuts it down.
    public init(httpClient: HTTPClient, requestTimeout: Duration = .seconds(15), logger: Logger) {
        self.exchange = JSONExchange(httpClient: httpClient, timeout: requestTimeout, bodyCap: 64 * 1024)
        self.logger = logger
    }

    /// Posts `message` to `url`.
    /// - Throws: `ReplyError` `.webhookExpired` (300001: use the OpenAPI), `.webhookThrottled`
    ///   (130101: back off), `.webhookRejected` (other errcodes), `.server`, `.rejected`,
    ///   `.timeout`, `.transport`.
    public func post(_ message: ReplyMessage, to url: String) async throws(ReplyError) {
        let endpoint = Self.endpoint
        let answer = try await exchange.post(url: url, endpoint: endpoint, body: message.webhookBody, logger: logger)
        guard answer.status == 200 else {
            if answer.status >= 500 { throw ReplyError(.server(status: answer.status), endpoint: endpoint) }
            throw ReplyError(.rejected(status: answer.status), endpoint: endpoint, serverMessage: String(answer.rawBody.prefix(200)))
        }
        // A 200 without an errcode is taken as success: that is all a 200 can promise here.
        let errcode = answer.object?.int("errcode") ?? 0
        if errcode == 0 { return }
        let errmsg = answer.object?.string("errmsg")
        let code: ReplyError.Code =
            switch errcode {
            case 300001: .webhookExpired
            case 130101: .webhookThrottled
            default: .webhookRejected(errcode: errcode)
            }
        throw ReplyError(code, endpoint: endpoint, serverCode: String(errcode), serverMessage: errmsg)
    }
}
