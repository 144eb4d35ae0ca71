import Foundation
import NIOCore
import ServiceLifecycle
import SwitchboardBackplane
import SwitchboardClient
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTesting
import Synchronization
import Testing

/// A backplane whose user binds never complete until released: a broker that is slow or
/// stalled exactly when a client connects.
final class HeldBindBackplane: Backplane {
    private let inner = InMemoryBackplane()
    private let held = Mutex<[@Sendable () -> Void]>([])

    func setDeliveryHandler(_ handler: @escaping BackplaneDeliveryHandler) { inner.setDeliveryHandler(handler) }

    func bind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        guard case .user = address else { return inner.bind(address, completion: completion) }
        let inner = self.inner
        held.withLock { $0.append { inner.bind(address, completion: completion) } }
    }

    func unbind(_ address: BackplaneAddress, completion: @escaping @Sendable (Result<Void, BackplaneError>) -> Void) {
        inner.unbind(address, completion: completion)
    }

    func publish(_ frame: ByteBuffer, to address: BackplaneAddress, completion: @escaping @Sendable (Result<PublishOutcome, BackplaneError>) -> Void)
    {
        inner.publish(frame, to: address, completion: completion)
    }

    var isReady: Bool { inner.isReady }
    var statistics: BackplaneStatistics { inner.statistics }
    var heldBinds: Int { held.withLock { $0.count } }

    /// Completes every bind held so far.
    func release() {
        for bind in held.withLock({ held in
            defer { held = [] }
            return held
        }) { bind() }
    }

    func run() async throws { try await inner.run() }
}

@Suite("Session close decisions", .serialized, .timeLimit(.minutes(1)))
struct SessionCloseDefectTests {
    @Test("a drain closes a session whose user binding is still pending with 1012, and it never gets welcome")
    func drainClosesPendingSessions() async throws {
        let backplane = HeldBindBackplane()
        try await withGateway(
            backplane: backplane,
            configure: {
                $0.drainGrace = .zero
                $0.drainWindow = .zero
                $0.userBindTimeout = .seconds(30)
            }
        ) { gateway in
            let pending = try await TestClient.connect(port: gateway.port, path: "/ws?user=pending")
            #expect(try await eventually { backplane.heldBinds == 1 })
            await gateway.gateway.drain()
            backplane.release()  // the bind completes after the drain: too late for a welcome
            #expect(try await pending.nextCloseCode() == 1012)
            #expect(gateway.gateway.localCounts.connections == 0)
        }
    }
}

/// The close handshake the gateway starts (RFC 6455 7.1): its close frame, the client's
/// answer, then the gateway closes TCP; a client that never answers is cut off after 2 s.
@Suite("Close handshake started by the gateway", .serialized, .timeLimit(.minutes(1)))
struct GatewayCloseHandshakeTests {
    /// Reads `connection` until the close frame; returns its code and how long the socket
    /// stayed open after it.
    static func closeAndLinger(_ connection: WebSocketConnection) async -> (code: UInt16?, lingered: Duration) {
        var code: UInt16?
        var closedAt: ContinuousClock.Instant?
        for await event in connection.events {
            if case .close(let received) = event {
                code = received
                closedAt = .now
            }
        }
        return (code, closedAt.map { .now - $0 } ?? .zero)
    }

    @Test("a client that answers the close frame is disconnected at once; one that does not, after the 2 s deadline")
    func waitsForTheClientsClose() async throws {
        try await withGateway(configure: {
            $0.messageRate = 1
            $0.messageBurst = 1
            $0.rateLimitedCloseAfter = 1
        }) { gateway in
            // Rate abuse: 1008 with the close handshake.
            let polite = try await WebSocketConnection.connect(host: "127.0.0.1", port: gateway.port, path: "/ws?user=polite")
            try await polite.send(text: #"{"type":"ping"}"#)
            try await polite.send(text: #"{"type":"ping"}"#)
            let answered = await Self.closeAndLinger(polite)
            #expect(answered.code == 1008)
            #expect(
                answered.lingered < .seconds(1),
                "the gateway closed TCP when the client's close arrived, not at the deadline: \(answered.lingered)"
            )

            let silent = try await WebSocketConnection.connect(host: "127.0.0.1", port: gateway.port, path: "/ws?user=silent", answerPings: false)
            try await silent.send(text: #"{"type":"ping"}"#)
            try await silent.send(text: #"{"type":"ping"}"#)
            let unanswered = await Self.closeAndLinger(silent)
            #expect(unanswered.code == 1008)
            #expect(unanswered.lingered >= .milliseconds(1500), "the gateway waited for the client's close frame: \(unanswered.lingered)")
            #expect(unanswered.lingered < .seconds(10))
        }
    }
}
