public import NIOCore
import NIOPosix
public import NIOSSL
public import NIOWebSocket

/// A raw WebSocket client connection (RFC 6455) over SwiftNIO.
///
/// It does the opening handshake itself, so a refused handshake reports the HTTP status
/// (``HandshakeError/refused(status:body:)``), and it can send any frame, including ones
/// a well-behaved client would not (tests use that). `switchboard-bench` and the tests
/// build on it.
///
/// Threading: all methods may be called from any task. Received frames arrive in
/// ``frames``, in order; ping frames are answered with pong automatically.
public final class WebSocketConnection: Sendable {
    /// What arrives from the server.
    public enum Event: Sendable {
        case text(String)
        case binary(ByteBuffer)
        /// A pong frame (answers to pings the client sent).
        case pong(ByteBuffer)
        /// A ping frame from the server (answered automatically unless turned off).
        case ping(ByteBuffer)
        /// The server sent a close frame with this code (nil when it had no payload).
        case close(code: UInt16?)
    }

    /// Everything received, in order; finishes when the connection closes.
    public let events: AsyncStream<Event>
    /// The underlying NIO channel.
    public let channel: any Channel
    /// The headers of the server's 101 response (a load balancer's `Set-Cookie`, for example).
    public let responseHeaders: [(name: String, value: String)]

    private init(channel: any Channel, events: AsyncStream<Event>, responseHeaders: [(name: String, value: String)]) {
        self.channel = channel
        self.events = events
        self.responseHeaders = responseHeaders
    }

    /// Opens a connection and completes the WebSocket handshake.
    /// - Parameters:
    ///   - host: Server address (a loopback address in tests).
    ///   - port: Server port.
    ///   - path: Request target, with its query (e.g. `/ws?user=alice`).
    ///   - headers: Extra request headers (e.g. `Authorization`).
    ///   - localAddress: Source address to bind, to spread many connections over loopback addresses.
    ///   - tls: Connect with TLS (`wss://`) using this configuration.
    ///   - answerPings: Answer the server's pings with pongs and its close frame with a close
    ///     frame (a test may turn it off to play a dead client).
    ///   - handshakeTimeout: Give up when the TCP connect, TLS and the upgrade together take
    ///     longer (``HandshakeError/timedOut``, or NIO's connect timeout error); nil: only
    ///     NIO's 10 s TCP connect timeout, and a server that accepts but never answers holds the call.
    ///   - eventLoopGroup: Where the connection runs.
    /// - Throws: ``HandshakeError`` when the server does not answer 101 (in time), or a NIO error.
    public static func connect(
        host: String,
        port: Int,
        path: String,
        headers: [(String, String)] = [],
        localAddress: SocketAddress? = nil,
        answerPings: Bool = true,
        tls: TLSConfiguration? = nil,
        handshakeTimeout: Duration? = nil,
        eventLoopGroup: (any EventLoopGroup)? = nil
    ) async throws -> WebSocketConnection {
        let sslContext = try tls.map { try NIOSSLContext(configuration: $0) }
        let eventLoopGroup = eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton
        let (events, continuation) = AsyncStream<Event>.makeStream()
        let handshakeDone = eventLoopGroup.any().makePromise(of: [(name: String, value: String)].self)
        let key = WebSocketKey.random()
        var bootstrap = ClientBootstrap(group: eventLoopGroup)
            .channelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: host))
                    }
                    try channel.pipeline.syncOperations.addHandler(
                        HandshakeHandler(
                            host: host,
                            path: path,
                            headers: headers,
                            key: key,
                            answerPings: answerPings,
                            events: continuation,
                            done: handshakeDone
                        )
                    )
                }
            }
        if let localAddress { bootstrap = bootstrap.bind(to: localAddress) }
        let deadline = handshakeTimeout.map { NIODeadline.now() + TimeAmount($0) }
        if let handshakeTimeout { bootstrap = bootstrap.connectTimeout(TimeAmount(handshakeTimeout)) }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            handshakeDone.fail(error)
            continuation.finish()
            throw error
        }
        // Runs on the channel's event loop, where the handshake handler lives; once the
        // handshake is done the handler has left the pipeline and this does nothing.
        let handshakeTimer = deadline.map { deadline in
            channel.eventLoop.scheduleTask(deadline: deadline) {
                guard let context = try? channel.pipeline.syncOperations.context(handlerType: HandshakeHandler.self),
                    let handler = context.handler as? HandshakeHandler
                else { return }
                handler.fail(context: context, .timedOut)
            }
        }
        let responseHeaders: [(name: String, value: String)]
        do {
            responseHeaders = try await handshakeDone.futureResult.get()
            handshakeTimer?.cancel()
        } catch {
            handshakeTimer?.cancel()
            channel.close(promise: nil)
            throw error
        }
        return WebSocketConnection(channel: channel, events: events, responseHeaders: responseHeaders)
    }

    /// Sends a text message as one frame.
    public func send(text: String) async throws {
        try await send(frame: WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
    }

    /// Sends any frame exactly as given (set `maskKey` for a conforming client frame).
    public func send(frame: WebSocketFrame) async throws {
        try await channel.writeAndFlush(frame)
    }

    /// Writes raw bytes to the socket, bypassing the frame encoder.
    public func send(rawBytes: [UInt8]) async throws {
        let channel = self.channel
        try await channel.eventLoop.flatSubmit {
            // Write from the decoder's position: outbound data from there skips the frame encoder.
            channel.pipeline.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self).flatMap { context in
                context.writeAndFlush(NIOAny(ByteBuffer(bytes: rawBytes)))
            }
        }.get()
    }

    /// Sends a close frame (code 1000) and closes the socket.
    public func close() async {
        var payload = ByteBuffer()
        payload.write(webSocketErrorCode: .normalClosure)
        try? await send(frame: WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload))
        try? await channel.close()
    }

    /// Closes the socket without a close frame (like a client that vanishes).
    public func abort() async {
        try? await channel.close()
    }
}

/// Why a WebSocket handshake failed.
public enum HandshakeError: Error, Sendable, Equatable {
    /// The server answered with a status other than 101.
    case refused(status: Int, body: String)
    /// The server's answer was not valid HTTP or had a wrong `Sec-WebSocket-Accept`.
    case invalidResponse(String)
    /// The connection closed before the handshake finished.
    case connectionClosed
    /// The server did not finish the handshake within the `handshakeTimeout` given to
    /// ``WebSocketConnection/connect(host:port:path:headers:localAddress:answerPings:tls:handshakeTimeout:eventLoopGroup:)``.
    case timedOut
}
