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
        router.get("/v1/history") { request, _ -> Response in
            await history(request, gateway: gateway)
        }
        router.get("/v1/presence") { request, _ -> Response in
            await presence(request, gateway: gateway)
        }
    }

    /// Checks the API key; nil when the request may go on, else the refusal.
    static func refusal(_ request: Request, gateway: Gateway) -> Response? {
        let keys = gateway.configuration.apiKeys
        guard !keys.isEmpty else {
            return error(.notFound, "the backend API is off: start the gateway with --api-key")
        }
        guard let presented = bearerToken(request.headers[.authorization]), keys.contains(where: { constantTimeEqual($0, presented) }) else {
            gateway.metrics.apiKeyRejected()
            return error(.unauthorized, "a valid API key is required: Authorization: Bearer KEY")
        }
        return nil
    }

    /// `GET /v1/history?user=…` or `?room=…`, with `since` (an offset; messages after it)
    /// and `limit` (default 100, at most the recovery limit): the stream's top and its
    /// retained messages, oldest first, as the frames recipients got.
    static func history(_ request: Request, gateway: Gateway) async -> Response {
        if let refusal = refusal(request, gateway: gateway) { return refusal }
        guard let history = gateway.history else {
            return error(.notFound, "this gateway keeps no history: start it with --history")
        }
        let query = request.uri.queryParameters
        let stream: BackplaneAddress
        do {
            switch (query["user"].map(String.init), query["room"].map(String.init)) {
            case (let user?, nil): stream = .user(try UserID(validating: user))
            case (nil, let room?): stream = .room(try RoomID(validating: room))
            default: return error(.badRequest, "give exactly one of user= and room=")
            }
        } catch let failure as IdentifierError {
            return error(.badRequest, failure.explanation)
        } catch {
            return Self.error(.badRequest, "invalid id")
        }
        let maximum = gateway.configuration.recoveryLimit
        var since: UInt64 = 0
        if let text = query["since"] {
            guard let value = UInt64(String(text)), value <= (1 << 53) - 1 else {
                return error(.badRequest, "since must be an integer from 0 to 9007199254740991")
            }
            since = value
        }
        var limit = min(100, maximum)
        if let text = query["limit"] {
            guard let value = Int(String(text)), value >= 1, value <= maximum else {
                return error(.badRequest, "limit must be an integer from 1 to \(maximum)")
            }
            limit = value
        }
        let range: HistoryRange
        do {
            // The oldest `limit` after `since`, even when more are kept: a page, not a recovery.
            range = try await history.read(stream, after: since, limit: limit, partial: true)
        } catch {
            gateway.logger.warning("API history read failed", metadata: [LoggingKeys.address: "\(stream)", LoggingKeys.errorType: "\(error)"])
            return Self.error(.serviceUnavailable, "the history store cannot be reached now")
        }
        // The page starts right after `since` (nothing expired or trimmed before it): a backend
        // can tell a page from a range with a hole. `since` past the top is no range at all.
        let complete = since <= range.top.offset && (range.entries.first.map { $0.offset == since + 1 } ?? (since == range.top.offset))
        var body = ByteBuffer()
        body.writeString(#"{"stream":"#)
        var name = ""
        JSONText.appendQuoted(stream.routingKey, to: &name)
        body.writeString(name)
        body.writeString(#","position":"# + ServerFrame.positionJSON(range.top))
        body.writeString(complete ? #","complete":true"# : #","complete":false"#)
        body.writeString(#","messages":["#)
        for (index, entry) in range.entries.prefix(limit).enumerated() {
            if index > 0 { body.writeString(",") }
            body.writeImmutableBuffer(entry.frame)
        }
        body.writeString("]}")
        return Routes.jsonResponse(.ok, String(buffer: body))
    }

    /// `GET /v1/presence?room=…` with `limit` (default and most: the presence list limit):
    /// the room's users across all gateways with their connection counts, and how many there are.
    static func presence(_ request: Request, gateway: Gateway) async -> Response {
        if let refusal = refusal(request, gateway: gateway) { return refusal }
        guard let presence = gateway.presence else {
            return error(.notFound, "this gateway keeps no presence: start it with --presence")
        }
        let query = request.uri.queryParameters
        guard let roomText = query["room"] else { return error(.badRequest, "give room=") }
        let room: RoomID
        do {
            room = try RoomID(validating: String(roomText))
        } catch {
            return Self.error(.badRequest, error.explanation)
        }
        let maximum = gateway.configuration.presenceListLimit
        var limit = maximum
        if let limitText = query["limit"] {
            guard let value = Int(String(limitText)), value >= 1, value <= maximum else {
                return error(.badRequest, "limit must be an integer from 1 to \(maximum)")
            }
            limit = value
        }
        let result = await withCheckedContinuation { continuation in
            presence.read(room, limit: limit) { continuation.resume(returning: $0) }
        }
        let snapshot: PresenceSnapshot
        switch result {
        case .success(let value):
            snapshot = value
        case .failure(let failure):
            gateway.logger.warning("API presence read failed", metadata: [LoggingKeys.roomID: "\(room)", LoggingKeys.errorType: "\(failure)"])
            return error(.serviceUnavailable, "the presence store cannot be reached now")
        }
        var text = #"{"room":"#
        JSONText.appendQuoted(room.rawValue, to: &text)
        text += #","users":"# + ServerFrame.presenceUsersJSON(snapshot.users.map { (user: $0.user, connections: $0.connections) })
        text += #","count":"# + String(snapshot.count)
        if snapshot.users.count < snapshot.count { text += #","truncated":true"# }
        return Routes.jsonResponse(.ok, text + "}")
    }

    static func handle(_ request: Request, gateway: Gateway) async -> Response {
        if let refusal = refusal(request, gateway: gateway) { return refusal }
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
        var offsetJSON = ""
        do {
            var frame = publish.frame
            var published: PublishOutcome?
            if let history = gateway.history, let head = publish.head {
                let started = ContinuousClock.now
                do {
                    let appended = try await history.append(head, to: address)
                    gateway.metrics.historyWritten(after: ContinuousClock.now - started, succeeded: true)
                    frame = appended.frame
                    published = appended.published
                    offsetJSON = #","offset":"# + String(appended.position.offset) + #","epoch":""# + appended.position.epoch + "\""
                } catch {
                    gateway.metrics.historyWritten(after: ContinuousClock.now - started, succeeded: false)
                    gateway.metrics.apiPublished("rejected")
                    gateway.logger.warning(
                        "API history write failed",
                        metadata: [LoggingKeys.address: "\(address)", LoggingKeys.errorType: "\(error)"]
                    )
                    return Self.error(.serviceUnavailable, "the history store did not take the message; nothing was sent")
                }
            }
            let result: PublishOutcome
            if let published { result = published } else { result = try await gateway.backplane.publish(frame, to: address) }
            switch result {
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
        text += offsetJSON + "}"
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
