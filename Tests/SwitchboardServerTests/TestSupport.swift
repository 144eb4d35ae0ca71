import Foundation
import Logging
import NIOCore
import NIOWebSocket
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardClient
import SwitchboardServer
import Synchronization
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A gateway running in the test process on a free loopback port.
struct RunningGateway: Sendable {
    let port: Int
    let gateway: Gateway

    /// Opens a client for `user` and reads its `welcome`.
    func connect(_ user: String) async throws -> TestClient {
        let client = try await TestClient.connect(port: port, path: "/ws?user=\(user)")
        let welcome = try await client.next()
        #expect(welcome["type"] == "welcome")
        return client
    }

    /// GET `path` over plain HTTP; returns the status and body.
    func get(_ path: String) async throws -> (status: Int, body: String) {
        let url = URL(string: "http://127.0.0.1:\(port)\(path)")!
        let (data, response) = try await URLSession.shared.data(from: url)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }
}

/// Runs `body` against a live gateway built exactly as `switchboard serve` builds it.
func withGateway<T: Sendable>(
    backplane: any Backplane = InMemoryBackplane(),
    configure: (inout GatewayConfiguration) -> Void = { _ in },
    _ body: @Sendable (RunningGateway) async throws -> T
) async throws -> T {
    var configuration = GatewayConfiguration(gatewayID: "gw-test", port: 0)
    configure(&configuration)
    var logger = Logger(label: "test")
    logger.logLevel = .warning
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
    let serviceGroup = ServiceGroup(configuration: .init(services: [application], logger: logger))
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await serviceGroup.run() }
        var ports = portStream.makeAsyncIterator()
        guard let port = await ports.next() else { throw TestFailure("gateway did not start") }
        do {
            let result = try await body(RunningGateway(port: port, gateway: gateway))
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

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A WebSocket test client: sends JSON, and reads what arrives with a timeout.
final class TestClient: Sendable {
    let connection: WebSocketConnection
    private let inbox = Mutex<[WebSocketConnection.Event]>([])
    private let finished = Mutex(false)

    private init(connection: WebSocketConnection) {
        self.connection = connection
    }

    static func connect(port: Int, path: String, headers: [(String, String)] = []) async throws -> TestClient {
        let connection = try await WebSocketConnection.connect(host: "127.0.0.1", port: port, path: path, headers: headers)
        let client = TestClient(connection: connection)
        // The reader lives as long as the connection; it ends when the stream finishes.
        Task { [client] in
            for await event in connection.events { client.inbox.withLock { $0.append(event) } }
            client.finished.withLock { $0 = true }
        }
        return client
    }

    func send(_ text: String) async throws {
        try await connection.send(text: text)
    }

    func send(frame: WebSocketFrame) async throws {
        try await connection.send(frame: frame)
    }

    /// The next event, waiting up to `timeout`.
    func nextEvent(timeout: Duration = .seconds(5)) async throws -> WebSocketConnection.Event {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let event: WebSocketConnection.Event? = inbox.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            if let event { return event }
            if finished.withLock({ $0 }), inbox.withLock({ $0.isEmpty }) { throw TestFailure("connection closed") }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw TestFailure("nothing arrived within \(timeout)")
    }

    /// The next text frame, parsed as a JSON object.
    func next(timeout: Duration = .seconds(5)) async throws -> ReceivedFrame {
        let text = try await nextText(timeout: timeout)
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw TestFailure("not a JSON object: \(text)")
        }
        return ReceivedFrame(text: text, fields: object.mapValues { ($0 as? String) ?? "\($0)" })
    }

    /// The next text frame, exactly as sent.
    func nextText(timeout: Duration = .seconds(5)) async throws -> String {
        let event = try await nextEvent(timeout: timeout)
        guard case .text(let text) = event else { throw TestFailure("expected a text frame, got \(event)") }
        return text
    }

    /// The close code the server sends next (skipping nothing).
    func nextCloseCode(timeout: Duration = .seconds(5)) async throws -> UInt16? {
        let event = try await nextEvent(timeout: timeout)
        guard case .close(let code) = event else { throw TestFailure("expected a close frame, got \(event)") }
        return code
    }

    /// Asserts nothing arrives for `duration`.
    func expectSilence(for duration: Duration = .milliseconds(300), sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await Task.sleep(for: duration)
        let pending = inbox.withLock { $0 }
        #expect(pending.isEmpty, "unexpected: \(pending)", sourceLocation: sourceLocation)
    }

    /// Sends a ping frame of the protocol and checks the pong: the connection is alive and in order.
    func expectAlive(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        try await send(#"{"type":"ping","id":"alive"}"#)
        let pong = try await next()
        #expect(pong["type"] == "pong" && pong["id"] == "alive", sourceLocation: sourceLocation)
    }

    func close() async {
        await connection.close()
    }

    /// Drops the TCP connection without a close frame.
    func abort() async {
        await connection.abort()
    }
}

/// A text frame from the gateway: its exact text and its top-level members (non-strings as text).
struct ReceivedFrame: Sendable, CustomStringConvertible {
    let text: String
    let fields: [String: String]

    subscript(key: String) -> String? { fields[key] }

    var description: String { text }
}

/// Polls `condition` until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}
