import Foundation
public import Logging
import NIOCore
public import NIOWebSocket
import ServiceLifecycle
public import SwitchboardBackplane
public import SwitchboardClient
public import SwitchboardServer
import Synchronization
public import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A gateway running in the test process on a free loopback port.
public struct RunningGateway: Sendable {
    public let port: Int
    public let gateway: Gateway
    public let backplane: any Backplane

    /// Opens a client for `user` (percent-encoded into `?user=`) and reads its `welcome`.
    public func connect(_ user: String) async throws -> TestClient {
        let client = try await TestClient.connect(port: port, path: "/ws?user=\(percentEncodedQueryValue(user))")
        let welcome = try await client.next()
        guard welcome["type"] == "welcome" else { throw TestFailure("expected welcome, got \(welcome)") }
        return client
    }

    /// GET `path` over plain HTTP; returns the status and body.
    public func get(_ path: String) async throws -> (status: Int, body: String) {
        let url = URL(string: "http://127.0.0.1:\(port)\(path)")!
        let (data, response) = try await URLSession.shared.data(from: url)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }
}

/// Runs `body` against a live gateway built exactly as `switchboard serve` builds it.
public func withGateway<T: Sendable>(
    backplane: any Backplane = InMemoryBackplane(),
    logs: CapturedLogs? = nil,
    configure: (inout GatewayConfiguration) -> Void = { _ in },
    _ body: @Sendable (RunningGateway) async throws -> T
) async throws -> T {
    try await withGateways([backplane], logs: logs, configure: { configuration, _ in configure(&configuration) }) { gateways in
        try await body(gateways[0])
    }
}

/// Runs `body` against one live gateway per backplane, all in this process, each on its
/// own free loopback port; gateway `i` is named `gw-test-<i>` unless `configure` says otherwise.
public func withGateways<T: Sendable>(
    _ backplanes: [any Backplane],
    logs: CapturedLogs? = nil,
    configure: (inout GatewayConfiguration, Int) -> Void = { _, _ in },
    _ body: @Sendable ([RunningGateway]) async throws -> T
) async throws -> T {
    var logger = logs.map { logs in Logger(label: "test") { _ in CapturingLogHandler(logs: logs) } } ?? Logger(label: "test")
    logger.logLevel =
        ProcessInfo.processInfo.environment["SWITCHBOARD_TEST_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? (logs == nil ? .warning : .trace)
    var applications: [any Service] = []
    var gateways: [(Gateway, any Backplane)] = []
    var portStreams: [AsyncStream<Int>] = []
    for (index, backplane) in backplanes.enumerated() {
        var configuration = GatewayConfiguration(
            gatewayID: backplanes.count == 1 ? "gw-test" : "gw-test-\(index + 1)",
            port: 0,
            auth: .none,
            drainGrace: .zero,
            drainWindow: .zero
        )
        configure(&configuration, index)
        let (portStream, portContinuation) = AsyncStream<Int>.makeStream()
        let (application, gateway) = buildGateway(
            configuration: configuration,
            backplane: backplane,
            logger: logger,
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            }
        )
        applications.append(application)
        gateways.append((gateway, backplane))
        portStreams.append(portStream)
    }
    let serviceGroup = ServiceGroup(configuration: .init(services: applications, logger: logger))
    let started = gateways
    let streams = portStreams
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await serviceGroup.run() }
        var running: [RunningGateway] = []
        for (index, stream) in streams.enumerated() {
            var ports = stream.makeAsyncIterator()
            guard let port = await ports.next() else { throw TestFailure("gateway \(index) did not start") }
            running.append(RunningGateway(port: port, gateway: started[index].0, backplane: started[index].1))
        }
        do {
            let result = try await body(running)
            await serviceGroup.triggerGracefulShutdown()
            try await group.waitForAll()
            return result
        } catch {
            await serviceGroup.triggerGracefulShutdown()
            try? await group.waitForAll()
            throw error
        }
    }
}

/// `value` with every byte outside `[A-Za-z0-9_.~-]` percent-encoded, for a query string.
public func percentEncodedQueryValue(_ value: String) -> String {
    var out = ""
    for byte in value.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"), UInt8(ascii: "-"):
            out.append(Character(Unicode.Scalar(byte)))
        default:
            out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
        }
    }
    return out
}

public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A WebSocket test client: sends JSON, and awaits what arrives with a timeout.
///
/// Events come from the connection's own stream (fed by its channel handler) into an
/// ``EventInbox``; a read waits on that inbox, woken by the event itself, until its
/// deadline: nothing polls.
public final class TestClient: Sendable {
    public let connection: WebSocketConnection
    private let inbox = EventInbox<WebSocketConnection.Event>()

    private init(connection: WebSocketConnection) {
        self.connection = connection
    }

    public static func connect(port: Int, path: String, headers: [(String, String)] = [], answerPings: Bool = true) async throws -> TestClient {
        let connection = try await WebSocketConnection.connect(host: "127.0.0.1", port: port, path: path, headers: headers, answerPings: answerPings)
        let client = TestClient(connection: connection)
        // The feeder lives as long as the connection; it ends when the stream finishes.
        Task { [inbox = client.inbox] in
            for await event in connection.events { inbox.append(event) }
            inbox.finish()
        }
        return client
    }

    public func send(_ text: String) async throws {
        try await connection.send(text: text)
    }

    public func send(frame: WebSocketFrame) async throws {
        try await connection.send(frame: frame)
    }

    /// The next event, waiting up to `timeout`.
    ///
    /// - Throws: ``TestClientError/closed`` once the connection ended and every event it
    ///   received was read; ``TestClientError/timedOut(_:)`` when nothing came in time.
    public func nextEvent(timeout: Duration = .seconds(5)) async throws -> WebSocketConnection.Event {
        guard let event = try await inbox.next(timeout: timeout) else { throw TestClientError.closed }
        return event
    }

    /// The next event, or nil once the connection ended and every event was read.
    ///
    /// - Throws: ``TestClientError/timedOut(_:)`` when neither happens within `timeout`.
    public func nextEventOrEnd(timeout: Duration = .seconds(5)) async throws -> WebSocketConnection.Event? {
        try await inbox.next(timeout: timeout)
    }

    /// Reads until the connection ends (the stream finishes) and returns the close code
    /// it got on the way, nil when the connection ended without a close frame.
    public func waitForClose(timeout: Duration = .seconds(5)) async throws -> UInt16? {
        let deadline = ContinuousClock.now + timeout
        var code: UInt16?
        while let event = try await inbox.next(timeout: deadline - .now) {
            if case .close(let received) = event { code = received }
        }
        return code
    }

    /// The next text frame, parsed as a JSON object.
    public func next(timeout: Duration = .seconds(5)) async throws -> ReceivedFrame {
        let text = try await nextText(timeout: timeout)
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw TestFailure("not a JSON object: \(text)")
        }
        return ReceivedFrame(text: text, fields: object.mapValues { ($0 as? String) ?? "\($0)" })
    }

    /// The next text frame whose `type` is `type`, skipping the others (keepalive pongs, acks).
    public func next(type: String, timeout: Duration = .seconds(5)) async throws -> ReceivedFrame {
        let deadline = ContinuousClock.now + timeout
        while true {
            let frame = try await next(timeout: deadline - .now)
            if frame["type"] == type { return frame }
        }
    }

    /// The next text frame, exactly as sent.
    public func nextText(timeout: Duration = .seconds(5)) async throws -> String {
        var event = try await nextEvent(timeout: timeout)
        // The server's keepalive pings are answered by the client library; skip them.
        while case .ping = event { event = try await nextEvent(timeout: timeout) }
        guard case .text(let text) = event else { throw TestFailure("expected a text frame, got \(event)") }
        return text
    }

    /// The close code the server sends next (skipping nothing).
    public func nextCloseCode(timeout: Duration = .seconds(5)) async throws -> UInt16? {
        let event = try await nextEvent(timeout: timeout)
        guard case .close(let code) = event else { throw TestFailure("expected a close frame, got \(event)") }
        return code
    }

    /// Asserts nothing arrives for `duration`.
    public func expectSilence(for duration: Duration = .milliseconds(300), sourceLocation: SourceLocation = #_sourceLocation) async throws {
        // The one sleep that is the point: nothing may arrive during it.
        try await Task.sleep(for: duration)
        let pending = inbox.pending
        #expect(pending.isEmpty, "unexpected: \(pending)", sourceLocation: sourceLocation)
    }

    /// Sends a ping frame of the protocol and checks the pong: the connection is alive and in order.
    public func expectAlive(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await send(#"{"type":"ping","id":"alive"}"#)
        let pong = try await next()
        #expect(pong["type"] == "pong" && pong["id"] == "alive", sourceLocation: sourceLocation)
    }

    public func close() async {
        await connection.close()
    }

    /// Drops the TCP connection without a close frame.
    public func abort() async {
        await connection.abort()
    }
}

/// A text frame from the gateway: its exact text and its top-level members (non-strings as text).
public struct ReceivedFrame: Sendable, CustomStringConvertible {
    public let text: String
    public let fields: [String: String]

    public subscript(key: String) -> String? { fields[key] }

    /// The `position` member (`{"epoch":…,"offset":…}`) of a welcome or an ack.
    public var position: (epoch: String, offset: Int)? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let position = object["position"] as? [String: Any], let epoch = position["epoch"] as? String, let offset = position["offset"] as? Int
        else { return nil }
        return (epoch, offset)
    }

    /// The `offset` member of a direct or room frame (history on).
    public var offset: Int? { fields["offset"].flatMap { Int($0) } }

    /// `since` JSON for a position: `{"epoch":"E","offset":N}`.
    public static func since(_ position: (epoch: String, offset: Int)) -> String {
        #"{"epoch":""# + position.epoch + #"","offset":"# + String(position.offset) + "}"
    }

    public var description: String { text }
}

/// Polls `condition` until it holds or `timeout` passes.
///
/// Only for states that announce themselves with no event to await (a metric, a broker's
/// binding list, a child process's exit); wait on the event where there is one.
public func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

/// Polls an async `condition` until it holds or `timeout` passes (an HTTP probe, say);
/// as ``eventually(timeout:_:)``, only where there is no event to await.
public func eventuallyAsync(timeout: Duration = .seconds(5), _ condition: () async -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}

/// Every log line a gateway wrote, message and metadata, for tests that assert on logs.
public final class CapturedLogs: Sendable {
    private let lines = Mutex<[String]>([])

    public init() {}

    public var all: [String] { lines.withLock { $0 } }

    func append(_ line: String) { lines.withLock { $0.append(line) } }

    /// A logger that records here, for parts built outside `withGateway` (a JWT authenticator).
    public func logger(label: String) -> Logger {
        var logger = Logger(label: label) { _ in CapturingLogHandler(logs: self) }
        logger.logLevel = .trace
        return logger
    }
}

/// A swift-log handler that records into ``CapturedLogs``.
struct CapturingLogHandler: LogHandler {
    let logs: CapturedLogs
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        logs.append("\(event.level) \(event.message) \(merged)")
    }
}

extension ReceivedFrame {
    /// The `users` of a `presence` answer as user → connections; nil when the frame has none.
    public var presenceUsers: [String: Int]? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let users = object["users"] as? [[String: Any]]
        else { return nil }
        var result: [String: Int] = [:]
        for entry in users {
            guard let user = entry["user"] as? String, let connections = entry["connections"] as? Int else { return nil }
            result[user] = connections
        }
        return result
    }
}
