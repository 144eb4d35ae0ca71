import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOSSL
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
                /// The `--echo-path` endpoint: no identity, no caps.
                case echo
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
                    // Never /ws: that would turn the authenticated endpoint into an open echo.
                    if let echoPath = configuration.echoPath, echoPath != "/ws", QueryString(uri: head.uri).path == echoPath {
                        decision.value = .echo
                        return channel.eventLoop.makeSucceededFuture(HTTPHeaders())
                    }
                    let clientAddress = Self.clientAddress(of: channel, head: head, trustedProxies: configuration.trustedProxies)
                    let decide: @Sendable (Result<Identity, AuthenticationFailure>) -> HTTPHeaders? = { result in
                        switch result {
                        case .success(let identity):
                            // Check and reserve in one step, after the identity is known: parallel
                            // handshakes with one token cannot all pass a check made earlier.
                            if let refusal = Self.admit(identity.user, from: clientAddress, on: channel, gateway: gateway) {
                                decision.value = .refused(refusal)
                                return nil
                            }
                            decision.value = .accepted(identity)
                            return HTTPHeaders()
                        case .failure(let failure):
                            gateway.logger.info("handshake refused", metadata: [LoggingKeys.authFailure: .string(failure.reason)])
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
                        let identity: Identity
                        switch decision.value {
                        case .accepted(let accepted):
                            identity = accepted
                        case .echo:
                            try channel.pipeline.syncOperations.addHandler(EchoHandler(maximumMessageSize: configuration.maximumFrameSize))
                            return UpgradeResult.websocket
                        case .undecided, .refused:
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
                        // The idle timeout restarts with every byte; this bounds each whole request.
                        try channel.pipeline.syncOperations.addHandler(RequestDeadlineHandler(timeout: TimeAmount(configuration.handshakeTimeout)))
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
        let path = QueryString(uri: head.uri).path
        guard path == "/ws" || (gateway.configuration.echoPath.map { path == $0 } ?? false) else {
            return Refusal(status: .notFound, message: "WebSocket endpoint is /ws")
        }
        if gateway.isFull, !gateway.isDraining {
            return refusal(for: .gatewayFull, configuration: gateway.configuration)
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

    /// Reserves a connection for `user` under every cap, held until `channel` closes;
    /// or the refusal that a cap gives.
    private static func admit(_ user: UserID, from address: String?, on channel: any Channel, gateway: Gateway) -> Refusal? {
        let decision = gateway.admission.admit(user: user, address: address)
        if decision == .admitted {
            let admission = gateway.admission
            channel.closeFuture.whenComplete { _ in admission.release(user: user, address: address) }
        }
        return refusal(for: decision, configuration: gateway.configuration)
    }

    /// The HTTP answer to a cap's decision; nil when admitted.
    private static func refusal(for decision: AdmissionState.Decision, configuration: GatewayConfiguration) -> Refusal? {
        switch decision {
        case .admitted:
            nil
        case .gatewayFull:
            Refusal(status: .serviceUnavailable, message: "gateway full: at most \(configuration.maximumConnections) connections")
        case .userLimit:
            Refusal(status: .tooManyRequests, message: "at most \(configuration.maximumConnectionsPerUser) connections per user")
        case .addressLimit:
            Refusal(status: .tooManyRequests, message: "at most \(configuration.maximumConnectionsPerAddress) connections per client address")
        }
    }

    /// The client's IP address for the per-address cap: the TCP peer, or, when the peer is
    /// a trusted proxy, the last address it appended to `X-Forwarded-For` (HAProxy's
    /// `option forwardfor`). Entries further left were written by the client and prove nothing.
    static func clientAddress(of channel: any Channel, head: HTTPRequestHead, trustedProxies: Set<String>) -> String? {
        guard let peer = channel.remoteAddress?.ipAddress else { return nil }
        guard trustedProxies.contains(peer) else { return peer }
        let forwarded = head.headers["x-forwarded-for"].flatMap { $0.split(separator: ",") }
        guard let last = forwarded.last?.trimmingCharacters(in: .whitespaces), !last.isEmpty else { return peer }
        return last
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

/// Closes an HTTP/1.1 connection whose request does not arrive whole in time.
///
/// `HTTPConnectionStateHandler`'s idle timeout restarts with every byte read, so a body
/// trickled a byte every few seconds would hold the socket for ever. This deadline runs
/// from the start of each request (the first one from when the handler is added) to its
/// end, whatever arrives in between.
final class RequestDeadlineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        arm(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            if deadline == nil { arm(context: context) }
        case .body:
            break
        case .end:
            deadline?.cancel()
            deadline = nil
        }
        context.fireChannelRead(data)
    }

    private func arm(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            channel.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension RequestDeadlineHandler: Sendable {}
