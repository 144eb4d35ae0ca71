public import Logging
public import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// One Redis connection that opens itself again after every loss.
///
/// It lives on one SwiftNIO event loop: the socket is NIO's and hiredis only parses
/// (``RESPReader``), so there is no thread of its own and nothing blocks. Commands are
/// pipelined: ``send(_:completion:)`` may be called from any thread, writes are
/// flushed once per event-loop tick, and replies complete in the order sent.
///
/// A *subscriber* connection (Pub/Sub) hands `message` pushes to `onMessages` in
/// batches, on its event loop; its replies are the confirmations of `SUBSCRIBE`,
/// `UNSUBSCRIBE` and `PING`.
///
/// Life: ``start()`` connects, sends `AUTH` when the configuration has a password, runs
/// `setUp` (a backplane re-subscribes its channels there) and only then reports open.
/// When the connection drops, or a command waits longer than the command timeout, every
/// pending command fails with `connectionLost`, `onStateChange(false)` runs, and it
/// reconnects after a jittered, growing delay. Commands sent while it is not open fail
/// at once with `notConnected`: nothing is queued for later.
///
/// With ``RedisConfiguration/tls`` (`rediss://`) the socket speaks TLS (swift-nio-ssl):
/// the server's chain is verified against the configured CA and its certificate must
/// name the host (an IP address is matched against its IP SANs), unless `verify_none`.
///
/// Pending commands are bounded (``RedisConfiguration/maximumPendingCommands`` and
/// `maximumPendingBytes`): past the bound `send` fails at once with `overloaded`, so a
/// server that stops reading (SIGSTOP) cannot grow NIO's write buffer without limit; the
/// command timeout still answers every command that was accepted.
public final class RedisConnection: Sendable {
    /// Runs when a command's reply (or failure) arrives, on the connection's event loop.
    public typealias Completion = @Sendable (Result<RedisValue, RedisError>) -> Void

    /// Sends commands during set-up, before the connection counts as open.
    public struct SetUp: Sendable {
        public let channel: any Channel

        /// Sends `command`; the future fails on an error reply or a lost connection.
        public func send(_ command: RedisCommand) -> EventLoopFuture<RedisValue> {
            let promise = channel.eventLoop.makePromise(of: RedisValue.self)
            channel.writeAndFlush(
                RedisOutbound(command: command) { result in promise.completeWith(result.mapError { $0 as any Error }) },
                promise: nil
            )
            return promise.futureResult
        }

        /// Loads Lua scripts (`SCRIPT LOAD`, pipelined); the future holds their digests, in
        /// order, for ``RedisConnection/evaluate(script:sha:keys:arguments:completion:)``.
        public func loadScripts(_ scripts: [String]) -> EventLoopFuture<[String]> {
            let loads = scripts.map { send(RedisCommand("SCRIPT", "LOAD", $0)) }
            return EventLoopFuture.whenAllSucceed(loads, on: channel.eventLoop).flatMapThrowing { replies in
                try replies.map { reply in
                    guard let digest = reply.string else { throw RedisError(.protocolError, "SCRIPT LOAD did not answer a digest") }
                    return digest
                }
            }
        }
    }

    public let configuration: RedisConfiguration
    /// Names the connection in logs (`gw-1-subscriber`).
    public let name: String
    public let eventLoop: any EventLoop
    private let logger: Logger
    private let isSubscriber: Bool
    private let setUp: @Sendable (SetUp) -> EventLoopFuture<Void>
    private let onMessages: @Sendable ([RedisMessage]) -> Void
    private let onStateChange: @Sendable (Bool) -> Void
    private let core: NIOLoopBoundBox<Core>
    /// Built once from ``RedisConfiguration/tls``; a failure fails every connect with it.
    private let tlsContext: Result<NIOSSLContext?, RedisError>
    private let open = Atomic<Bool>(false)
    /// Commands accepted and not answered yet, and their bytes: the bound's count.
    private let pending = Mutex<(commands: Int, bytes: Int)>((0, 0))
    /// The oldest pending command is past half the command timeout (set every 250 ms).
    private let stalled = Atomic<Bool>(false)

    /// State that only the event loop touches.
    private final class Core {
        enum Phase { case idle, connecting, open, shutDown }
        var phase = Phase.idle
        var channel: (any Channel)?
        var handler: RedisChannelHandler?
        var attempt = 0
        var reconnect: Scheduled<Void>?
        var watchdog: RepeatedTask?
        var flushScheduled = false
        var lastPing = NIODeadline.now()
        /// The sentinel asked first; moved on after a connect that failed, so that one
        /// sentinel still naming a dead master cannot hold the connection back.
        var firstSentinel = 0
    }

    /// - Parameters:
    ///   - isSubscriber: the connection will `SUBSCRIBE`; `message` pushes go to `onMessages`.
    ///   - setUp: runs after every connect (and `AUTH`), before the connection is open.
    ///   - onStateChange: true once open, false when lost; on the event loop.
    public init(
        configuration: RedisConfiguration,
        name: String,
        eventLoop: any EventLoop,
        logger: Logger,
        isSubscriber: Bool = false,
        setUp: @escaping @Sendable (SetUp) -> EventLoopFuture<Void> = { $0.channel.eventLoop.makeSucceededVoidFuture() },
        onMessages: @escaping @Sendable ([RedisMessage]) -> Void = { _ in },
        onStateChange: @escaping @Sendable (Bool) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.tlsContext = Result { () throws(RedisError) in try configuration.makeTLSContext() }
        self.name = name
        self.eventLoop = eventLoop
        var logger = logger
        logger[metadataKey: LoggingKeys.connection] = .string(name)
        logger[metadataKey: LoggingKeys.server] = .string(configuration.serverDescription)
        self.logger = logger
        self.isSubscriber = isSubscriber
        self.setUp = setUp
        self.onMessages = onMessages
        self.onStateChange = onStateChange
        self.core = NIOLoopBoundBox.makeBoxSendingValue(Core(), eventLoop: eventLoop)
    }

    /// Whether the connection is open and set up now.
    public var isOpen: Bool { open.load(ordering: .acquiring) }

    /// Commands accepted and not answered yet.
    public var pendingCommands: Int { pending.withLock { $0.commands } }

    /// Whether the server has left a command unanswered for more than half the command
    /// timeout: it is stalled (stopped, or far behind), and commands are about to time out.
    public var isStalled: Bool { stalled.load(ordering: .relaxed) }

    /// Starts connecting; returns at once.
    public func start() {
        eventLoop.execute {
            guard self.core.value.phase == .idle else { return }
            let interval = TimeAmount.milliseconds(250)
            self.core.value.watchdog = self.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
                self.checkHealth()
            }
            self.connect()
        }
    }

    /// Closes the connection and stops reconnecting; pending commands fail.
    public func shutdown() async {
        let closed: EventLoopFuture<Void> = eventLoop.flatSubmit {
            let core = self.core.value
            core.phase = .shutDown
            core.reconnect?.cancel()
            core.watchdog?.cancel()
            self.setOpen(false)
            guard let channel = core.channel else { return self.eventLoop.makeSucceededVoidFuture() }
            return channel.close().recover { _ in }
        }
        try? await closed.get()
    }

    /// Sends `command`; `completion` gets the reply, `.serverError` for an error reply,
    /// or `.notConnected` / `.connectionLost`.
    ///
    /// Fails at once with `.overloaded` when the pending-command bound is reached.
    public func send(_ command: RedisCommand, completion: @escaping Completion) {
        let size = command.bytes.readableBytes
        let maximum = (configuration.maximumPendingCommands, configuration.maximumPendingBytes)
        let refused: (commands: Int, bytes: Int)? = pending.withLock { pending in
            if pending.commands >= maximum.0 || (pending.commands > 0 && pending.bytes + size > maximum.1) { return pending }
            pending.commands += 1
            pending.bytes += size
            return nil
        }
        if let refused {
            return completion(
                .failure(RedisError(.overloaded, "\(command.name): \(refused.commands) commands (\(refused.bytes) bytes) await Redis; not sent"))
            )
        }
        // Every accepted command is answered exactly once (reply, failure, timeout): that
        // answer releases its place in the bound.
        let answered: Completion = { result in
            self.pending.withLock { pending in
                pending.commands -= 1
                pending.bytes -= size
            }
            if self.configuration.sentinel != nil, case .failure(let error) = result, error.code == .serverError,
                // The message reads "<command>: <the server's words>".
                error.message.contains(": READONLY")
            {
                // A demoted master: drop it, and the reconnect asks the sentinels again.
                self.logger.warning("Redis answered READONLY: reconnecting to the current master")
                self.core.value.channel?.close(promise: nil)
            }
            completion(result)
        }
        if eventLoop.inEventLoop {
            sendOnLoop(command, answered)
        } else {
            eventLoop.execute { self.sendOnLoop(command, answered) }
        }
    }

    /// Async form of ``send(_:completion:)``.
    public func send(_ command: RedisCommand) async throws(RedisError) -> RedisValue {
        let result = await withCheckedContinuation { continuation in
            send(command) { continuation.resume(returning: $0) }
        }
        return try result.get()
    }

    private func sendOnLoop(_ command: RedisCommand, _ completion: @escaping Completion) {
        let core = core.value
        guard core.phase == .open, let channel = core.channel else {
            completion(.failure(RedisError(.notConnected, "\(command.name): the connection to Redis is not open")))
            return
        }
        channel.write(RedisOutbound(command: command, completion: completion), promise: nil)
        // One flush per event-loop tick for everything written in it: pipelining.
        if !core.flushScheduled {
            core.flushScheduled = true
            eventLoop.execute {
                self.core.value.flushScheduled = false
                self.core.value.channel?.flush()
            }
        }
    }

    private func connect() {
        let core = core.value
        guard core.phase != .shutDown else { return }
        core.phase = .connecting
        let isSubscriber = isSubscriber
        let onMessages = onMessages
        let configuration = configuration
        let tls: NIOSSLContext?
        switch tlsContext {
        case .success(let context): tls = context
        case .failure(let error):
            logger.error("Redis TLS configuration unusable", metadata: [LoggingKeys.errorType: .string("\(error)")])
            scheduleReconnect()
            return
        }
        let eventLoop = eventLoop
        serverAddress()
            .flatMap { (host: String, port: Int) -> EventLoopFuture<any Channel> in
                // SNI and host-name verification take a name; an IP address literal is checked
                // against the certificate's IP SANs instead (NIOSSL does that when the name is nil).
                let serverHostname: String? = (try? SocketAddress(ipAddress: host, port: 0)) == nil ? host : nil
                return ClientBootstrap(group: eventLoop)
                    .connectTimeout(TimeAmount(configuration.connectTimeout))
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            if let tls {
                                try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverHostname))
                            }
                            try channel.pipeline.syncOperations.addHandler(RedisChannelHandler(isSubscriber: isSubscriber, onMessages: onMessages))
                        }
                    }
                    .connect(host: host, port: port)
            }
            .flatMap { channel -> EventLoopFuture<any Channel> in
                // On the channel's own loop (the bootstrap's), so the pipeline can be read directly.
                self.core.value.channel = channel
                self.core.value.handler = try? channel.pipeline.syncOperations.handler(type: RedisChannelHandler.self)
                let setUp = SetUp(channel: channel)
                // A server (or TLS proxy) that accepts and then stalls must not hold the
                // connection in "connecting": the set-up gets the connect and command timeouts.
                let deadline = eventLoop.scheduleTask(in: TimeAmount(configuration.connectTimeout + configuration.commandTimeout)) {
                    channel.close(promise: nil)
                }
                return self.handshake(setUp, tls: tls != nil)
                    .flatMap { self.authenticate(setUp) }
                    .flatMap { self.checkMaster(setUp) }
                    .flatMap { self.setUp(setUp) }
                    .always { _ in deadline.cancel() }
                    .map { channel }
            }
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard self.core.value.phase == .connecting else {
                        channel.close(promise: nil)
                        return
                    }
                    self.core.value.phase = .open
                    self.core.value.attempt = 0
                    self.setOpen(true)
                    self.logger.info(
                        "Redis connection open",
                        metadata: [LoggingKeys.address: .string("\(channel.remoteAddress.map { "\($0)" } ?? "?")")]
                    )
                    channel.closeFuture.whenComplete { _ in self.connectionClosed(channel) }
                case .failure(let error):
                    self.core.value.firstSentinel &+= 1
                    self.logger.warning("Redis connect failed", metadata: [LoggingKeys.errorType: .string("\(error)")])
                    self.core.value.channel?.close(promise: nil)
                    self.core.value.channel = nil
                    self.core.value.handler = nil
                    self.scheduleReconnect()
                }
            }
    }

    /// Where to connect: the configured server, or the master the sentinels name now.
    private func serverAddress() -> EventLoopFuture<(host: String, port: Int)> {
        guard let sentinel = configuration.sentinel else {
            return eventLoop.makeSucceededFuture((configuration.host, configuration.port))
        }
        return askSentinel(sentinel, index: 0, first: core.value.firstSentinel % sentinel.addresses.count, failures: [])
    }

    /// `SENTINEL get-master-addr-by-name` of the sentinels from `first` on, in turn, until one answers.
    private func askSentinel(
        _ sentinel: RedisConfiguration.Sentinel,
        index: Int,
        first: Int,
        failures: [String]
    ) -> EventLoopFuture<(host: String, port: Int)> {
        guard index < sentinel.addresses.count else {
            return eventLoop.makeFailedFuture(
                RedisError(.connectFailed, "no sentinel named a master '\(sentinel.masterName)': \(failures.joined(separator: "; "))")
            )
        }
        let address = sentinel.addresses[(first + index) % sentinel.addresses.count]
        let eventLoop = eventLoop
        let timeout = configuration.commandTimeout
        return ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(configuration.connectTimeout))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(RedisChannelHandler(isSubscriber: false, onMessages: { _ in }))
                }
            }
            .connect(host: address.host, port: address.port)
            .flatMap { channel -> EventLoopFuture<RedisValue> in
                // A sentinel that accepts and never answers is given up on after the command timeout.
                let deadline = eventLoop.scheduleTask(in: TimeAmount(timeout)) { channel.close(promise: nil) }
                let reply = SetUp(channel: channel).send(RedisCommand("SENTINEL", "get-master-addr-by-name", sentinel.masterName))
                reply.whenComplete { _ in
                    deadline.cancel()
                    channel.close(promise: nil)
                }
                return reply
            }
            .flatMapThrowing { reply -> (host: String, port: Int) in
                guard case .array(let parts) = reply, parts.count == 2, let host = parts[0].string, !host.isEmpty,
                    let portText = parts[1].string, let port = Int(portText), (1...65535).contains(port)
                else {
                    throw RedisError(.connectFailed, "it knows no master '\(sentinel.masterName)' (\(reply))")
                }
                return (host, port)
            }
            .flatMapError { error in
                let reason = "\(address.host):\(address.port): \((error as? RedisError)?.message ?? "\(error)")"
                return self.askSentinel(sentinel, index: index + 1, first: first, failures: failures + [reason])
            }
    }

    /// With Sentinel, `ROLE` must say `master`: a sentinel may still name a demoted master
    /// for a moment after a failover.
    private func checkMaster(_ setUp: SetUp) -> EventLoopFuture<Void> {
        guard configuration.sentinel != nil else { return eventLoop.makeSucceededVoidFuture() }
        return setUp.send(RedisCommand("ROLE")).flatMapThrowing { reply in
            guard case .array(let parts) = reply, let role = parts.first?.string else {
                throw RedisError(.protocolError, "ROLE answered \(reply)")
            }
            guard role == "master" else { throw RedisError(.connectFailed, "the server the sentinels named is a \(role), not the master") }
        }
    }

    /// Over TLS, a `PING` whose reply proves the handshake succeeded: without it a
    /// connection that sends nothing at set-up would count as open until the failed
    /// handshake closes it. With a password, the `AUTH` reply proves it instead (a `PING`
    /// before `AUTH` would be refused).
    private func handshake(_ setUp: SetUp, tls: Bool) -> EventLoopFuture<Void> {
        guard tls, configuration.password == nil else { return eventLoop.makeSucceededVoidFuture() }
        let server = configuration.serverDescription
        return setUp.send(RedisCommand("PING")).flatMapErrorThrowing { error in
            // The server's own answer (NOAUTH, say) came through TLS: the handshake worked.
            if let error = error as? RedisError, error.code == .serverError { throw error }
            let cause = (error as? RedisError)?.cause ?? IOErrorDescription(error)
            throw RedisError(.connectFailed, "TLS handshake with \(server) failed", cause: cause)
        }.map { _ in }
    }

    private func authenticate(_ setUp: SetUp) -> EventLoopFuture<Void> {
        guard let password = configuration.password else { return eventLoop.makeSucceededVoidFuture() }
        let command = configuration.username.map { RedisCommand("AUTH", $0, password) } ?? RedisCommand("AUTH", password)
        let server = configuration.serverDescription
        let isTLS = configuration.tls != nil
        return setUp.send(command).flatMapErrorThrowing { error in
            if let error = error as? RedisError, error.code != .serverError {
                // No reply at all: the connection (or its TLS handshake) failed.
                let what = isTLS ? "TLS handshake with \(server) failed (no answer to AUTH)" : "no answer to AUTH from \(server)"
                throw RedisError(.connectFailed, what, cause: error.cause ?? error)
            }
            // The server's words only: they never contain the password.
            let reason = (error as? RedisError)?.message ?? "\(error)"
            throw RedisError(.authenticationFailed, reason)
        }.map { _ in }
    }

    private func connectionClosed(_ channel: any Channel) {
        let core = core.value
        guard core.channel === channel else { return }
        core.channel = nil
        core.handler = nil
        stalled.store(false, ordering: .relaxed)
        setOpen(false)
        guard core.phase != .shutDown else { return }
        logger.warning("Redis connection lost; reconnecting")
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        let core = core.value
        guard core.phase != .shutDown else { return }
        let ceiling = min(configuration.reconnectMaximumDelay, configuration.reconnectMinimumDelay * (1 << min(core.attempt, 20)))
        let delay = ceiling * Double.random(in: 0.5...1.0)
        core.attempt += 1
        core.phase = .connecting
        core.reconnect = eventLoop.scheduleTask(in: TimeAmount(delay)) {
            self.connect()
        }
    }

    /// Every 250 ms: a command without a reply past the timeout closes the connection;
    /// an idle open connection pings now and then so that a dead server is noticed.
    private func checkHealth() {
        let core = core.value
        guard core.phase == .open, let channel = core.channel, let handler = core.handler else { return }
        let now = NIODeadline.now()
        let waited = handler.oldestPendingSince.map { now - $0 }
        let isStalled = waited.map { $0 > TimeAmount(configuration.commandTimeout / 2) } ?? false
        if stalled.exchange(isStalled, ordering: .relaxed) != isStalled {
            logger.log(
                level: isStalled ? .warning : .info,
                isStalled ? "Redis is not answering; commands wait" : "Redis answers again",
                metadata: [LoggingKeys.pending: .stringConvertible(handler.pendingCount)]
            )
        }
        if let waited, waited > TimeAmount(configuration.commandTimeout) {
            logger.warning(
                "Redis command timed out; closing the connection",
                metadata: [LoggingKeys.pending: .stringConvertible(handler.pendingCount)]
            )
            channel.close(promise: nil)
            return
        }
        if handler.pendingCount == 0, now - core.lastPing > TimeAmount(configuration.healthCheckInterval) {
            core.lastPing = now
            sendOnLoop(RedisCommand("PING")) { _ in }
        }
    }

    private func setOpen(_ value: Bool) {
        let was = open.exchange(value, ordering: .acquiringAndReleasing)
        if was != value { onStateChange(value) }
    }
}

/// A Pub/Sub `message` push: the channel it was published to and its payload.
public struct RedisMessage: Sendable {
    public var channel: ByteBuffer
    public var payload: ByteBuffer
}

extension RedisConnection {
    /// Runs a Lua script by its digest (`sha`, from a `SCRIPT LOAD` of this connection's
    /// set-up), or by its text when there is none yet; a `NOSCRIPT` answer (the server
    /// flushed its scripts) runs it once more by its text.
    public func evaluate(
        script: String,
        sha: String?,
        keys: [ByteBuffer],
        arguments: [ByteBuffer],
        completion: @escaping Completion
    ) {
        let rest = [ByteBuffer(string: String(keys.count))] + keys + arguments
        guard let sha else {
            return send(RedisCommand("EVAL", [ByteBuffer(string: script)] + rest), completion: completion)
        }
        send(RedisCommand("EVALSHA", [ByteBuffer(string: sha)] + rest)) { [self] result in
            if case .failure(let error) = result, error.code == .serverError, "\(error)".contains("NOSCRIPT") {
                send(RedisCommand("EVAL", [ByteBuffer(string: script)] + rest), completion: completion)
            } else {
                completion(result)
            }
        }
    }
}
