import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import SwitchboardProtocol
import SwitchboardRegistry

/// The per-connection setup of a gateway's listening socket: HTTP/1.1 for the few HTTP
/// routes (handled by Hummingbird's responder) and an upgrade on `GET /ws` to a
/// ``SessionHandler`` that sits directly in the NIO pipeline.
///
/// Modelled on HummingbirdWebSocket's `HTTP1WebSocketUpgradeChannel`, with one
/// difference that matters for memory: an upgraded connection gets no
/// `NIOAsyncChannel` and no task; ``handle(value:logger:)`` returns at once and the
/// channel lives on through its handlers (docs/architecture.md explains the choice).
struct GatewayChildChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        case websocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, Refusal)
    }

    /// Why a WebSocket handshake was refused, and the HTTP answer it gets.
    struct Refusal: Sendable {
        var status: HTTPResponse.Status
        var message: String
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    let gateway: Gateway
    private let authenticator: Authenticator

    init(responder: @escaping HTTPChannelHandler.Responder, gateway: Gateway) {
        self.responder = Self.redirectingLateUpgrades(responder)
        self.gateway = gateway
        self.authenticator = Authenticator(mode: gateway.configuration.auth)
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            if let tls = gateway.configuration.tls {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls))
            }
            /// What `shouldUpgrade` decided, read by the upgrade and not-upgraded paths.
            enum Decision {
                case undecided
                case accepted(Identity)
                case refused(Refusal)
            }
            let decision = NIOLoopBoundBox(Decision.undecided, eventLoop: channel.eventLoop)
            let gateway = self.gateway
            let authenticator = self.authenticator
            let configuration = gateway.configuration

            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: configuration.maximumFrameSize,
                enableAutomaticErrorHandling: true,
                shouldUpgrade: { channel, head in
                    if let refusal = Self.precheck(head, gateway: gateway) {
                        decision.value = .refused(refusal)
                        return channel.eventLoop.makeSucceededFuture(nil)
                    }
                    let decide: @Sendable (Result<Identity, AuthenticationFailure>) -> HTTPHeaders? = { result in
                        switch result {
                        case .success(let identity):
                            if gateway.registry.connectionCount(of: identity.user) >= configuration.maximumConnectionsPerUser {
                                decision.value = .refused(
                                    Refusal(status: .tooManyRequests, message: "at most \(configuration.maximumConnectionsPerUser) connections per user")
                                )
                                return nil
                            }
                            decision.value = .accepted(identity)
                            return HTTPHeaders()
                        case .failure(let failure):
                            gateway.logger.info("handshake refused", metadata: ["switchboard.auth.failure": .string(failure.reason)])
                            decision.value = .refused(Refusal(status: .unauthorized, message: failure.reason))
                            return nil
                        }
                    }
                    if let immediate = authenticator.authenticateImmediately(head) {
                        return channel.eventLoop.makeSucceededFuture(decide(immediate))
                    }
                    // Signature checks are async in jwt-kit; the result comes back on this channel's loop.
                    let promise = channel.eventLoop.makePromise(of: Result<Identity, AuthenticationFailure>.self)
                    promise.completeWithTask { await authenticator.authenticateAsync(head) }
                    return promise.futureResult.map(decide)
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        guard case .accepted(let identity) = decision.value else {
                            throw ChannelError.inappropriateOperationForState
                        }
                        let high = max(configuration.maximumOutboundBytes, 2)
                        try channel.syncOptions?.setOption(
                            ChannelOptions.writeBufferWaterMark,
                            value: .init(low: high / 2, high: high)
                        )
                        let session = SessionHandler(connectionID: ConnectionID.next(), identity: identity, gateway: gateway)
                        try channel.pipeline.syncOperations.addHandler(session)
                        return UpgradeResult.websocket
                    }
                }
            )

            let serverUpgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: configuration.tls != nil))
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: configuration.handshakeTimeout, logger: logger)
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        if case .refused(let refusal) = decision.value {
                            return UpgradeResult.refused(asyncChannel, refusal)
                        }
                        return UpgradeResult.notUpgraded(asyncChannel)
                    }
                }
            )
            var upgradeConfiguration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(
                upgradeConfiguration: serverUpgradeConfiguration
            )
            upgradeConfiguration.enablePipelining = false
            upgradeConfiguration.enableErrorHandling = false
            upgradeConfiguration.enableResponseHeaderValidation = false
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: upgradeConfiguration)
            // A client that neither finishes a request nor a handshake in time is closed.
            let timeout = channel.eventLoop.scheduleTask(in: TimeAmount(configuration.handshakeTimeout)) {
                channel.close(promise: nil)
            }
            result.whenComplete { _ in timeout.cancel() }
            return Value(upgradeResult: result, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .websocket:
                // The session handler owns the connection from here on.
                return
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .refused(let http1, let refusal):
                await writeRefusal(refusal, to: http1, logger: logger)
            }
        } catch {
            logger.debug("connection setup failed", metadata: [LoggingKeys.errorType: "\(error)"])
        }
    }

    /// Refusals decided from the request alone, before any credential is looked at.
    private static func precheck(_ head: HTTPRequestHead, gateway: Gateway) -> Refusal? {
        guard QueryString(uri: head.uri).path == "/ws" else {
            return Refusal(status: .notFound, message: "WebSocket endpoint is /ws")
        }
        guard gateway.isReady else {
            return Refusal(status: .serviceUnavailable, message: "gateway not ready")
        }
        let allowed = gateway.configuration.allowedOrigins
        if !allowed.isEmpty, let origin = head.headers.first(name: "origin"), !allowed.contains(where: { ExactUTF8.equal($0, origin) }) {
            return Refusal(status: .forbidden, message: "origin not allowed")
        }
        return nil
    }

    private func writeRefusal(_ refusal: Refusal, to channel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, logger: Logger) async {
        gateway.metrics.refused(status: refusal.status.code)
        do {
            try await channel.executeThenClose { _, outbound in
                var body = ByteBuffer()
                body.writeString(HTTPErrorBody.json(status: refusal.status, message: refusal.message))
                let head = HTTPResponse(
                    status: refusal.status,
                    headerFields: [
                        .connection: "close",
                        .contentType: "application/json",
                        .contentLength: "\(body.readableBytes)",
                    ]
                )
                try await outbound.write(contentsOf: [.head(head), .body(body), .end(nil)])
            }
        } catch {
            logger.trace("could not write handshake refusal", metadata: [LoggingKeys.errorType: "\(error)"])
        }
    }

    /// NIO only upgrades the first request on a connection. A later upgrade request on a
    /// kept-alive connection is redirected to the same URI with `Connection: close`, so the
    /// client retries on a new connection (HummingbirdWebSocket does the same).
    private static func redirectingLateUpgrades(_ responder: @escaping HTTPChannelHandler.Responder) -> HTTPChannelHandler.Responder {
        struct RedirectedUpgrade: Error {}
        return { request, writer, channel in
            guard request.headers[.upgrade]?.lowercased() == "websocket" else {
                return try await responder(request, writer, channel)
            }
            var location = request.uri.path
            if let query = request.uri.query { location += "?" + query }
            try await writer.writeResponse(HTTPResponse(status: .temporaryRedirect, headerFields: [.connection: "close", .location: location]))
            throw RedirectedUpgrade()
        }
    }
}
