import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SwitchboardBackplane
import SwitchboardProtocol

/// `POST /v1/publish`: backend services publish to a user, a room or everyone, with an
/// API key (`--api-key`). The contract is docs/openapi.yaml.
///
/// Publishes go to the backplane exactly like a client's, so they reach every gateway,
/// but they are not copied to the events exchange: a worker that answers events
/// through this API cannot feed itself.
enum PublishAPI {
    static func add(to router: Router<BasicRequestContext>, gateway: Gateway) {
        router.post("/v1/publish") { request, _ -> Response in
            await handle(request, gateway: gateway)
        }
    }

    static func handle(_ request: Request, gateway: Gateway) async -> Response {
        let keys = gateway.configuration.apiKeys
        guard !keys.isEmpty else {
            return error(.notFound, "the publish API is off: start the gateway with --api-key")
        }
        guard let presented = bearerToken(request.headers[.authorization]), keys.contains(where: { constantTimeEqual($0, presented) }) else {
            gateway.metrics.apiKeyRejected()
            return error(.unauthorized, "a valid API key is required: Authorization: Bearer KEY")
        }
        guard gateway.isReady else {
            return error(.serviceUnavailable, "the gateway is not ready (backplane down, or draining)")
        }
        let body: ByteBuffer
        do {
            var request = request
            body = try await request.collectBody(upTo: gateway.configuration.maximumMessageSize)
        } catch {
            return Self.error(.contentTooLarge, "the body is limited to \(gateway.configuration.maximumMessageSize) bytes")
        }
        let publish: ServerPublishRequest
        switch ServerPublishRequest.decode(body) {
        case .success(let decoded): publish = decoded
        case .failure(let failure): return error(.badRequest, failure.message)
        }
        let address: BackplaneAddress
        switch publish.target {
        case .user(let user): address = .user(user)
        case .room(let room): address = .room(room)
        case .everyone: address = .broadcast
        }
        let outcome: String
        do {
            switch try await gateway.backplane.publish(publish.frame, to: address) {
            case .routed: outcome = "routed"
            // Only direct messages can be unroutable on RabbitMQ and Redis; a room nobody is
            // in (seen on the in-memory backplane) is as on those: published, received by none.
            case .noRecipient: outcome = publish.target.isUser ? "recipient_offline" : "routed"
            case .unknown: outcome = "unknown"
            }
        } catch {
            gateway.metrics.apiPublished("rejected")
            gateway.logger.warning("API publish failed", metadata: [LoggingKeys.address: "\(address)", LoggingKeys.errorType: "\(error)"])
            return Self.error(.serviceUnavailable, "the backplane did not take the message; nothing was sent")
        }
        gateway.metrics.apiPublished(outcome)
        var text = #"{"outcome":""# + outcome + #"","address":"#
        JSONText.appendQuoted(address.routingKey, to: &text)
        text += "}"
        return Routes.jsonResponse(.accepted, text)
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        Routes.jsonResponse(status, HTTPErrorBody.json(status: status, message: message))
    }

    static func bearerToken(_ header: String?) -> String? {
        guard let header, header.count > 7, header.prefix(7).lowercased() == "bearer " else { return nil }
        let token = header.dropFirst(7).drop { $0 == " " }
        return token.isEmpty ? nil : String(token)
    }

    /// Compares every byte whatever the first difference, so the time taken does not
    /// tell an attacker how much of a guessed key was right.
    static func constantTimeEqual(_ expected: String, _ presented: String) -> Bool {
        let a = Array(expected.utf8)
        let b = Array(presented.utf8)
        var difference = UInt8(truncatingIfNeeded: a.count ^ b.count)
        for index in 0..<max(a.count, b.count) {
            let x = index < a.count ? a[index] : 0
            let y = index < b.count ? b[index] : 0
            difference |= x ^ y
        }
        return difference == 0
    }
}

extension ServerPublishRequest.Target {
    var isUser: Bool {
        if case .user = self { true } else { false }
    }
}
